"""LightningDataModule over manifest folders (``train.tsv`` and ``valid.tsv``) or shard
locations: set-up checks, the corpus table, the batch samplers and the loaders."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader

from w2v2_pretrain.data.collate import Batch, Collator, MaskPlanner, MaskSeeds
from w2v2_pretrain.data.config import DataConfig, VerifyLevel
from w2v2_pretrain.data.dataset import AudioDataset
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.record import load_record, verified_scan
from w2v2_pretrain.data.sampler import BucketBatchSampler, corpus_shares
from w2v2_pretrain.data.scan import Scan
from w2v2_pretrain.data.shards.index import read_index
from w2v2_pretrain.data.shards.plan import ShardBatchSampler, shard_sizes_in_order
from w2v2_pretrain.data.shards.reader import ShardDataset
from w2v2_pretrain.data.shards.transport import Transfer
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.data.verify import check_manifest
from w2v2_pretrain.data.workers import worker_init_fn
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models.config import Wav2Vec2Config

log = run_logger(__name__)  # set-up facts hold for every rank: said once


class TimedDataLoader(DataLoader):
    """A `DataLoader` whose batches say how long the loop waited for each (``Batch.data_wait``,
    host seconds): the time ``next`` blocked, worker start-up included for the first batch of
    an iteration. What the workers do in parallel with the step costs nothing here; only what
    the step waits for counts."""

    def __iter__(self) -> Iterator:
        start = time.perf_counter()
        batches = super().__iter__()
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            if isinstance(batch, Batch):
                batch.data_wait = time.perf_counter() - start
            yield batch
            start = time.perf_counter()


class AudioDataModule(pl.LightningDataModule):
    """Pretraining data: any manifest folder made by ``w2v2-manifest`` or fairseq, or shards.

    Args:
        cfg: the ``data`` settings (`DataConfig`), validated here.
        model: the model the batches are for: its receptive field (shorter clips are bad
            files) and its masking, drawn in the loaders (`MaskPlanner`) with ``seeds``. None:
            no masks planned (the model then draws its own).
        seeds: where the masks and distractors are drawn from (`MaskSeeds`; given with
            ``model``: the run's seeds, training/config.py).
        fixed_order: serve epoch 0's batches and crops every epoch (overfitting one batch).
        bad_files_log: the run's ``bad_files.tsv``, where the set-up names the bad files it
            skipped; its folder keeps the verify record when the manifest's folder is
            read-only.

    A resumed run says where its interrupted epoch stands (`resume_at`), before the training
    loader is made.
    """

    def __init__(
        self,
        cfg: DataConfig,
        *,
        model: Wav2Vec2Config | None = None,
        seeds: MaskSeeds | None = None,
        fixed_order: bool = False,
        bad_files_log: Path | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg.validate()
        self.manifest_dirs = [Path(d) for d in cfg.manifest_dirs]
        self.audio_per_update = cfg.audio_seconds_per_update
        self.receptive_field = model.receptive_field if model is not None else 400
        if model is not None and seeds is None:
            raise ValueError("AudioDataModule: a model's masks need seeds= (MaskSeeds)")
        self.planners = MaskPlanner.for_splits(model, seeds) if model is not None else {}
        self.fixed_order = fixed_order
        self.bad_files_log = bad_files_log
        self.datasets: dict[str, AudioDataset] = {}
        self.skipped: dict[str, dict[str, int]] = {}
        """Per split: what the set-up skipped, counted by reason."""
        self.bad_files: dict[str, list[str]] = {}
        """Per split: the bad files the set-up skipped (``where: reason``)."""
        # (C,) each corpus's share of the training batches (None: each utterance once)
        self.train_shares: np.ndarray | None = None
        self._resume: tuple[int, int] | None = None

    def resume_at(self, epoch: int, batches: int) -> None:
        """The run continues ``epoch`` after its first ``batches`` training batches (what the
        checkpoint's loop progress says: training/run_state.py)."""
        self._resume = (epoch, batches)

    def _load(self, split: str) -> AudioDataset:
        if split in self.datasets:
            return self.datasets[split]
        if self.cfg.shard_locations:
            return self._loaded(split, self._load_shards(split))
        parts, skipped, bad_files = [], Counter(), []
        for folder in self.manifest_dirs:
            if not folder.is_dir():
                raise DataError(f"data.manifest_dir: {folder} is not a directory")
            manifest = read_manifest(folder / f"{split}.tsv")
            if manifest.outside.any():
                log.info(
                    "%s: %d lines lead out of the root (fairseq's ../ lines for linked "
                    "folders): read as fairseq reads them",
                    manifest.source,
                    int(manifest.outside.sum()),
                )
            part, part_skipped, part_bad = check_manifest(
                manifest,
                self.cfg.min_sample_size,
                self.receptive_field,
                scan=self._scan(manifest),
                verify=self.cfg.verify,
                on_bad_file=self.cfg.on_bad_file,
                sample_rate=self.cfg.sample_rate,
                resample=self.cfg.resample,
                downmix=self.cfg.downmix,
            )
            parts.append(part)
            skipped.update(part_skipped)
            bad_files += part_bad
        manifest = parts[0] if len(parts) == 1 else Manifest.concat(parts)
        self._note_skipped(split, skipped, bad_files)
        return self._loaded(split, AudioDataset(manifest, **self._item_settings(split)))

    def _item_settings(self, split: str) -> dict:
        """How a dataset of ``split`` turns a file into an utterance."""
        return dict(
            sample_rate=self.cfg.sample_rate,
            resample=self.cfg.resample,
            downmix=self.cfg.downmix,
            normalize=self.cfg.normalize,
            max_sample_size=self.cfg.max_sample_size,
            train=split == "train",
            seed=self.cfg.seed,
            crop_alignment=self.cfg.crop_alignment,
        )

    def _note_skipped(self, split: str, skipped: Counter, bad_files: list[str]) -> None:
        """Keep what the set-up skipped of ``split``; name the bad files in bad_files.tsv."""
        self.skipped[split] = dict(skipped)
        self.bad_files[split] = bad_files
        if bad_files and self.bad_files_log is not None and self._world()[1] == 0:
            self.bad_files_log.parent.mkdir(parents=True, exist_ok=True)
            with open(self.bad_files_log, "a") as f:
                f.writelines(f"setup\t{entry}\n" for entry in bad_files)

    def _load_shards(self, split: str) -> ShardDataset:
        """The ``split`` of every shard location (its index.json), less the clips shorter than
        ``min_sample_size`` or the feature encoder's receptive field (counted; w2v2-shard has
        checked and decoded every file, and what it skipped is counted in its index)."""
        parts, skipped = [], Counter()
        floor = max(self.cfg.min_sample_size, self.receptive_field)
        for location in self.cfg.shard_locations:
            part = read_index(location, split, self.transfer)
            lengths = part.num_samples * self.cfg.sample_rate // part.sample_rate
            short = lengths < floor
            if short.any():
                skipped[f"shorter than {floor} samples"] += int(short.sum())
                part = part.select(np.flatnonzero(~short))
            parts.append(part)
        self._note_skipped(split, skipped, [])
        return ShardDataset(parts, self.transfer, **self._item_settings(split))

    @property
    def transfer(self) -> Transfer:
        return Transfer(retries=self.cfg.shard_retries, timeout=float(self.cfg.shard_timeout))

    def _loaded(self, split: str, ds: AudioDataset) -> AudioDataset:
        if split == "train":
            self.train_shares = self._sampling_shares(ds)
        self._describe(split, ds)
        self.datasets[split] = ds
        return ds

    def _scan(self, manifest: Manifest) -> Scan | None:
        """What the files hold, from the corpus's verify record (made now if there is none).

        Under DDP global rank 0 checks (or re-checks the changed files) and writes the record;
        the other ranks wait at a barrier and read it, so the corpus is scanned once, not once
        per rank. None with ``data.verify=none`` (the check only stats the files).
        """
        level = VerifyLevel.parse(self.cfg.verify, "data.verify")
        if level == VerifyLevel.none:
            return None
        folder = self.bad_files_log.parent if self.bad_files_log is not None else None
        dist = torch.distributed
        if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
            return verified_scan(manifest, level, progress=True, folder=folder)
        scan = None
        if dist.get_rank() == 0:
            scan = verified_scan(manifest, level, progress=True, folder=folder)
        dist.barrier()
        if scan is None:
            scan = load_record(manifest.source, level, len(manifest), folder)
            if scan is None:  # e.g. nodes that share no file system
                logging.getLogger(__name__).warning(
                    "%s: rank %d cannot read rank 0's verify record: checking itself",
                    manifest.source,
                    dist.get_rank(),
                )
                scan = verified_scan(manifest, level, progress=False, folder=folder, write=False)
        return scan

    def _sampling_shares(self, ds: AudioDataset) -> np.ndarray | None:
        """(C,) each corpus's share of the training batches, from ``data.corpus_weights``
        (None: each utterance once per epoch). Temperature sampling weighs the hours of the
        utterances kept, as their manifests list them: before the ``max_sample_size`` crop,
        the hours a user knows a corpus by (XLS-R weighs each language's hours of data)."""
        weights, alpha = self.cfg.corpus_weight_list, self.cfg.temperature_alpha
        if (weights is None and alpha is None) or len(ds) == 0:
            return None
        return corpus_shares(
            _corpus_hours(ds, ds.manifest.samples_at(ds.sample_rate)), weights, alpha
        )

    def _describe(self, split: str, ds: AudioDataset) -> None:
        """Log one table of the corpora: utterances, hours (as the manifests list them, and
        after the ``max_sample_size`` crop), the natural share (of the hours) and, for
        training, the sampled share: of each epoch's batches (``train_shares``), or with no
        weights, of the cropped audio read (each utterance once)."""
        hours = _corpus_hours(ds, ds.manifest.samples_at(ds.sample_rate))
        cropped = _corpus_hours(ds, ds.sizes)
        natural = hours / hours.sum() if hours.sum() > 0 else np.zeros(len(hours))
        utterances = np.bincount(ds.manifest.corpora(), minlength=len(hours))
        names = [str(source) for source in ds.manifest.sources]
        width = max(len("corpus"), *map(len, names))
        head = f"{'corpus':<{width}}  {'utterances':>10}  {'hours':>9}  {'cropped h':>9}"
        head += f"  {'natural':>7}"
        title = f"{split}: {len(names)} " + ("corpus" if len(names) == 1 else "corpora")
        sampled = None
        if split == "train" and self.train_shares is not None:
            alpha = self.cfg.temperature_alpha
            how = (
                f"temperature, alpha {alpha}"
                if alpha
                else f"weights {self.cfg.corpus_weight_list}"
            )
            title += f"; sampled ({how}): share of each epoch's batches"
            sampled = self.train_shares
        elif split == "train" and cropped.sum() > 0:
            title += "; sampled: each utterance once per epoch (share of the cropped audio)"
            sampled = corpus_shares(cropped)
        if sampled is not None:
            head += f"  {'sampled':>7}"
        rows = [title, "  " + head]
        for c, name in enumerate(names):
            row = f"{name:<{width}}  {utterances[c]:>10d}  {hours[c]:>9.2f}  {cropped[c]:>9.2f}"
            row += f"  {natural[c]:>7.1%}"
            if sampled is not None:
                row += f"  {sampled[c]:>7.1%}"
            rows.append("  " + row)
        log.info("\n".join(rows))

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
        settings = dict(
            max_batch_size=self.cfg.max_batch_size,
            shuffle=train,
            seed=self.cfg.seed,
            num_replicas=replicas,
            rank=rank,
            fixed_epoch=0 if self.fixed_order else None,
            weights=self.train_shares if train else None,
        )
        budget = self.cfg.max_tokens if train else self.cfg.valid_max_tokens or self.cfg.max_tokens
        if isinstance(ds, ShardDataset):
            bounds, corpus = shard_sizes_in_order(ds.splits)
            s = ShardBatchSampler(
                ds.sizes, budget, bounds, corpus, workers=self.cfg.num_workers, **settings
            )
        else:
            s = BucketBatchSampler(
                ds.sizes,
                budget,
                corpora=np.array(ds.manifest.corpora(), dtype=np.int64),
                **settings,
            )
        return s

    def _loader(self, split: str) -> DataLoader:
        train = split == "train"
        sampler = self.sampler(split)
        if train and self._resume is not None:
            # resume mid-epoch: continue the interrupted epoch where it stopped, not from its
            # start; once (Lightning sets later epochs itself, through `batch_sampler.sampler`,
            # and a loader made again later is not a resume)
            (epoch, batches), self._resume = self._resume, None
            sampler.set_epoch(epoch)
            sampler.resume(epoch, batches)
        return TimedDataLoader(
            self.datasets[split],
            batch_sampler=sampler,
            collate_fn=Collator(
                self.cfg.collate,
                train=train,
                planner=self.planners.get(split),
                crop_alignment=self.cfg.crop_alignment,
            ),
            num_workers=self.cfg.num_workers,
            pin_memory=self.cfg.pin_memory and torch.cuda.is_available(),
            persistent_workers=self.cfg.persistent_workers and self.cfg.num_workers > 0,
            # the loader's own generator: creating an iterator must not consume the global RNG,
            # or a resumed run would draw different masks than an uninterrupted one
            generator=torch.Generator().manual_seed(self.cfg.seed),
            worker_init_fn=worker_init_fn(self.trainer.global_rank if self.trainer else 0),
        )

    def _inputs(self, split: str) -> str:
        """The manifests (or shard indexes) of ``split``, for messages."""
        if self.cfg.shard_locations:
            return ", ".join(f"{loc} ({split})" for loc in self.cfg.shard_locations)
        return ", ".join(str(d / f"{split}.tsv") for d in self.manifest_dirs)

    def train_dataloader(self) -> DataLoader:
        if len(self._load("train")) == 0:
            raise DataError(f"{self._inputs('train')}: no entries to train on")
        return self._loader("train")

    def val_dataloader(self) -> DataLoader | list:
        if len(self._load("valid")) == 0:
            log.warning("%s: empty, no validation", self._inputs("valid"))
            return []
        return self._loader("valid")


def _corpus_hours(ds: AudioDataset, samples: np.ndarray) -> np.ndarray:
    """(C,) hours per corpus of ``samples`` (N,), lengths at the dataset's rate."""
    count = len(ds.manifest.sources)
    return np.bincount(ds.manifest.corpora(), samples, count) / ds.sample_rate / 3600
