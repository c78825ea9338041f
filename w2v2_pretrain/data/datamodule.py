"""LightningDataModule over a manifest folder holding ``train.tsv`` and ``valid.tsv``."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from w2v2_pretrain.data.dataset import (
    AudioDataset,
    BadFilePolicy,
    CollateMode,
    Collator,
    MaskPlanner,
    VerifyLevel,
    check_manifest,
)
from w2v2_pretrain.data.manifest import Manifest, read_manifest
from w2v2_pretrain.data.sampler import BucketBatchSampler
from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.models.config import Wav2Vec2Config

log = logging.getLogger(__name__)


class AudioDataModule(pl.LightningDataModule):
    """Pretraining data: any manifest folder made by ``w2v2-manifest`` or fairseq.

    Args:
        manifest_dir: folder with ``train.tsv`` and ``valid.tsv`` (config ``data.manifest_dir``),
            or a list of such folders (several corpora, each with its own root).
        corpus_weights: with several folders, each corpus's share of every epoch's training
            batches (normalised; e.g. [3, 1]: three quarters from the first); None: as many
            batches as each corpus fills.
        sample_rate: rate the model expects.
        resample: resample other rates (True) or refuse them (False).
        downmix: average multi-channel audio (True) or refuse it (False).
        normalize: per-utterance zero mean / unit variance (fairseq ``normalize``; LARGE).
        min_sample_size: shorter clips are dropped and counted (fairseq, BASE: 32000).
        max_sample_size: longer clips are cropped (fairseq, BASE: 250000).
        max_tokens: samples per batch per device (fairseq ``max_tokens``, BASE: 1.4M).
        max_batch_size: optional cap on utterances per batch.
        valid_max_tokens: budget for validation batches (default: ``max_tokens``).
        collate: ``crop`` to the shortest in the batch (fairseq default) or ``pad``.
        num_workers, pin_memory, persistent_workers: DataLoader settings.
        seed: drives bucketing tie-breaks, batch order, random crops, masks and distractors.
        verify: at setup, ``none``, ``header`` (read every header: corrupt, empty, wrong-length
            files) or ``decode`` (decode every file: also truncated FLACs, NaN/Inf, silence).
        on_bad_file: ``skip`` (default) drops a bad file, names it in the log and in the run's
            ``bad_files.tsv`` and counts it; ``error`` stops at the first (in training, with a
            checkpoint).
        crop_alignment: random crops start at multiples of this many samples (1: anywhere, as
            fairseq; 320, the feature encoder's stride: a stretch of audio always maps to the
            same frames).
        audio_per_update: audio per optimizer update, e.g. ``1.6h``, ``96min`` or ``5600s``
            (a number means seconds); training derives the gradient accumulation from it and
            the devices. None: ``trainer.accumulate_grad_batches`` as set.
        receptive_field: samples the feature encoder needs for one frame (set from the model).

    ``fixed_order = True`` (set by training when overfitting one batch) serves epoch 0's
    batches and crops every epoch.
    """

    def __init__(
        self,
        manifest_dir: str | Sequence[str],
        sample_rate: int = 16_000,
        resample: bool = True,
        downmix: bool = True,
        normalize: bool = False,
        min_sample_size: int = 32_000,
        max_sample_size: int = 250_000,
        max_tokens: int = 1_400_000,
        max_batch_size: int | None = None,
        valid_max_tokens: int | None = None,
        collate: CollateMode | str = CollateMode.crop,
        num_workers: int = 2,
        pin_memory: bool = True,
        persistent_workers: bool = False,
        seed: int = 1,
        verify: VerifyLevel | bool | str = VerifyLevel.header,
        on_bad_file: BadFilePolicy | str = BadFilePolicy.skip,
        crop_alignment: int = 1,
        audio_per_update: float | str | None = None,
        corpus_weights: Sequence[float] | None = None,
        receptive_field: int = 400,
    ) -> None:
        super().__init__()
        _check_settings(locals())
        dirs = [manifest_dir] if isinstance(manifest_dir, (str, Path)) else list(manifest_dir)
        if not dirs:
            raise ConfigError("data.manifest_dir: no manifest folder given")
        self.manifest_dirs = [Path(d) for d in dirs]
        self.corpus_weights = (
            None if corpus_weights is None else [float(w) for w in corpus_weights]
        )
        if self.corpus_weights is not None and (
            len(self.corpus_weights) != len(dirs) or min(self.corpus_weights) <= 0
        ):
            raise ConfigError(
                f"data.corpus_weights: one positive weight per manifest folder ({len(dirs)}), "
                f"got {list(corpus_weights)}"
            )
        self.sample_rate = sample_rate
        self.resample = resample
        self.downmix = downmix
        self.normalize = normalize
        self.min_sample_size = min_sample_size
        self.max_sample_size = max_sample_size
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.valid_max_tokens = valid_max_tokens or max_tokens
        self.collate_mode = CollateMode.parse(collate, "data.collate")
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.persistent_workers = persistent_workers and num_workers > 0
        self.seed = seed
        self.verify = VerifyLevel.parse(verify, "data.verify")
        self.on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
        self.crop_alignment = crop_alignment
        self.audio_per_update = parse_audio_amount(audio_per_update, "data.audio_per_update")
        self.receptive_field = receptive_field
        self.fixed_order = False
        self.bad_files_log: Path | None = None  # the run's bad_files.tsv (set by training)
        self.planners: dict[str, MaskPlanner] = {}
        self.datasets: dict[str, AudioDataset] = {}
        self.dropped: dict[str, dict[str, int]] = {}
        self.skipped: dict[str, list[str]] = {}
        self._samplers: dict[str, BucketBatchSampler] = {}

    def plan_masks_for(
        self, model: Wav2Vec2Config, train_seed: int, fixed: bool, val_seed: int
    ) -> None:
        """Draw masks and distractors in the loaders (not on the device), as ``model`` would.

        Training draws anew each epoch from (``train_seed``, epoch, utterance), or the same
        every epoch when ``fixed``; validation always the same, from ``val_seed``.
        """
        self.receptive_field = model.receptive_field
        self.planners = {
            "train": MaskPlanner.for_model(model, train_seed, per_epoch=not fixed),
            "valid": MaskPlanner.for_model(model, val_seed, per_epoch=False),
        }

    def _load(self, split: str) -> AudioDataset:
        if split in self.datasets:
            return self.datasets[split]
        parts, dropped, skipped = [], Counter(), []
        for folder in self.manifest_dirs:
            if not folder.is_dir():
                raise DataError(f"data.manifest_dir: {folder} is not a directory")
            part, part_dropped, part_skipped = check_manifest(
                read_manifest(folder / f"{split}.tsv"),
                self.min_sample_size,
                self.receptive_field,
                verify=self.verify,
                on_bad_file=self.on_bad_file,
                progress=self.verify == VerifyLevel.decode,
                sample_rate=self.sample_rate,
                resample=self.resample,
                downmix=self.downmix,
            )
            parts.append(part)
            dropped.update(part_dropped)
            skipped += part_skipped
        manifest = parts[0] if len(parts) == 1 else Manifest.concat(parts)
        self.dropped[split] = dict(dropped)
        self.skipped[split] = skipped
        if skipped and self.bad_files_log is not None and self._world()[1] == 0:
            self.bad_files_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.bad_files_log, "a") as f:
                f.writelines(f"setup\t{entry}\n" for entry in skipped)
        ds = AudioDataset(
            manifest,
            self.sample_rate,
            resample=self.resample,
            downmix=self.downmix,
            normalize=self.normalize,
            max_sample_size=self.max_sample_size,
            train=split == "train",
            seed=self.seed,
            crop_alignment=self.crop_alignment,
        )
        self._describe(split, ds)
        self.datasets[split] = ds
        return ds

    def _describe(self, split: str, ds: AudioDataset) -> None:
        """Log each corpus's size and, for training, its share of every epoch's batches."""
        corpora = np.array(ds.manifest.corpora(), dtype=np.int64)
        for c, source in enumerate(ds.manifest.sources):
            mine = corpora == c
            hours = float(ds.sizes[mine].sum()) / self.sample_rate / 3600
            line = f"{split}: {source}: {int(mine.sum())} utterances, {hours:.2f} h (cropped)"
            if split == "train" and len(ds.manifest.sources) > 1:
                if self.corpus_weights is None:
                    share = mine.mean()
                else:
                    share = self.corpus_weights[c] / sum(self.corpus_weights)
                line += f"; {share:.1%} of each epoch's batches"
            log.info(line)

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._load("train")
        if stage in (None, "fit", "validate"):
            self._load("valid")

    def _world(self) -> tuple[int, int]:
        trainer = self.trainer
        return (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)

    def sampler(self, split: str) -> BucketBatchSampler:
        ds = self._load(split)
        replicas, rank = self._world()
        train = split == "train"
        s = BucketBatchSampler(
            ds.sizes,
            self.max_tokens if train else self.valid_max_tokens,
            max_batch_size=self.max_batch_size,
            shuffle=train,
            seed=self.seed,
            num_replicas=replicas,
            rank=rank,
            fixed_epoch=0 if self.fixed_order else None,
            corpora=np.array(ds.manifest.corpora(), dtype=np.int64),
            weights=self.corpus_weights if train else None,
        )
        self._samplers[split] = s
        return s

    def sampler_of(self, split: str) -> BucketBatchSampler | None:
        """The batch sampler of the last loader made for ``split``."""
        return self._samplers.get(split)

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        sampler = self.sampler(split)
        if train and self.trainer is not None:
            # resume mid-epoch: continue the interrupted epoch where it stopped, not from its start
            sampler.set_epoch(self.trainer.current_epoch)
            # `processed`: a checkpoint saved at the end of a batch counts it processed, not yet
            # completed, and Lightning resumes with the next batch index
            progress = self.trainer.fit_loop.epoch_loop.batch_progress.current
            sampler.resume(self.trainer.current_epoch, progress.processed)
        return DataLoader(
            self.datasets[split],
            batch_sampler=sampler,
            collate_fn=Collator(
                self.collate_mode,
                train=train,
                planner=self.planners.get(split),
                crop_alignment=self.crop_alignment,
            ),
            num_workers=self.num_workers,
            pin_memory=self.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.persistent_workers,
            # the loader's own generator: creating an iterator must not consume the global RNG,
            # or a resumed run would draw different masks than an uninterrupted one
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        if len(self._load("train")) == 0:
            folders = ", ".join(str(d / "train.tsv") for d in self.manifest_dirs)
            raise DataError(f"{folders}: no entries to train on")
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        if len(self._load("valid")) == 0:
            folders = ", ".join(str(d / "valid.tsv") for d in self.manifest_dirs)
            log.warning("%s: empty, no validation", folders)
            return []
        return self._loader("valid")


def parse_audio_amount(value: float | str | None, field: str) -> float | None:
    """Seconds of audio from ``5600``, ``5600s``, ``96min``/``96m`` or ``1.6h`` (None stays)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    units = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
    scale = 1.0
    for suffix, factor in units.items():
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(
            f"{field}: expected an amount of audio such as 1.6h, 96min or 5600s, got {value!r}"
        ) from None
    if not seconds > 0:
        raise ConfigError(f"{field}: must be positive, got {value!r}")
    return seconds


def _check_settings(args: dict) -> None:
    """Reject bad values at construction, naming the ``data.`` field."""
    optional = ("max_batch_size", "valid_max_tokens")  # None: no limit of their own
    positive = ("sample_rate", "max_sample_size", "max_tokens", "crop_alignment", *optional)
    non_negative = ("min_sample_size", "num_workers", "receptive_field")
    for name in positive + non_negative + ("seed",):
        value = args[name]
        if value is None and name in optional:
            continue
        if not isinstance(value, int) or isinstance(value, bool):
            raise ConfigError(f"data.{name}: expected an integer, got {value!r}")
        if name in positive and value <= 0:
            raise ConfigError(f"data.{name}: must be positive, got {value}")
        if name in non_negative and value < 0:
            raise ConfigError(f"data.{name}: must be >= 0, got {value}")
    if args["min_sample_size"] > args["max_sample_size"]:
        raise ConfigError(
            f"data.min_sample_size ({args['min_sample_size']}) exceeds "
            f"data.max_sample_size ({args['max_sample_size']})"
        )
    for budget in ("max_tokens", "valid_max_tokens"):
        if args[budget] is not None and args[budget] < args["max_sample_size"]:
            raise ConfigError(
                f"data.{budget} ({args[budget]}) is below data.max_sample_size "
                f"({args['max_sample_size']}): a clip cropped to max_sample_size would not fit "
                "a batch; raise it or lower max_sample_size"
            )
