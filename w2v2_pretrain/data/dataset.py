"""The audio dataset and the batch it collates to (the set-up checks are in verify.py)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.data.audio import normalize as normalize_wav
from w2v2_pretrain.data.audio import read_audio, sample_problem
from w2v2_pretrain.data.index import Manifest

# the set-up checks' names, importable from here as before
from w2v2_pretrain.data.verify import BadFilePolicy, VerifyLevel, check_manifest
from w2v2_pretrain.errors import DataError, SourceUnavailable
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.feature_encoder import frame_lengths
from w2v2_pretrain.models.masking import MaskPlan, draw_masks
from w2v2_pretrain.models.noise import PerUtteranceNoise

__all__ = ["AudioDataset", "Batch", "BadFilePolicy", "Collator", "VerifyLevel", "check_manifest"]


class CollateMode(Choice):
    """How a batch of different lengths becomes one tensor (``data.collate``)."""

    crop = "crop"
    """Crop every clip to the shortest (fairseq's pretraining default: no padding)."""
    pad = "pad"
    """Zero-pad to the longest and pass the lengths (the model masks the padding)."""


@dataclass
class Batch:
    """A collated batch of raw audio, with everything the step needs decided on the host.

    Shape:
        source: (B, L) float32 samples, zero-padded past each row's length.
        lengths: (B,) int64 valid samples per row.
        ids: (B,) int64 index of each utterance in its manifest.
        plan: masked frames and distractors (`MaskPlan`), drawn by the collator; None when no
            planner was given (the model then draws them).
        padded: True when some row is shorter than L (known without reading ``lengths`` back
            from the device).
        bad_files: ``where: reason`` of each file of this batch that could not be decoded and
            was left out (``data.on_bad_file``).
        read_samples: samples of the clips as read (each already capped at
            ``data.max_sample_size``), before the collator cropped them to the shortest.
        kept_samples: samples of the clips the batch holds (the sum of ``lengths``, on the host).
        data_wait: seconds the training loop waited for this batch (set by the loader,
            `TimedDataLoader`; 0 elsewhere).

    The last three are host numbers (the monitoring of ``train/padding_fraction``,
    ``train/cropped_fraction`` and ``train/data_wait_fraction``), so reading them costs the
    step no copy back from the device.
    """

    source: torch.Tensor
    lengths: torch.Tensor
    ids: torch.Tensor
    plan: MaskPlan | None = None
    padded: bool = False
    bad_files: tuple[str, ...] = ()
    read_samples: int = 0
    kept_samples: int = 0
    data_wait: float = 0.0

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, L) bool, True at padded samples."""
        steps = torch.arange(self.source.shape[1], device=self.source.device)
        return steps[None, :] >= self.lengths[:, None]

    def __len__(self) -> int:
        return self.source.shape[0]

    @property
    def padding_samples(self) -> int:
        """Zeros added past the rows' lengths (host arithmetic on the shape)."""
        return self.source.shape[0] * self.source.shape[1] - self.kept_samples

    def pin_memory(self) -> Batch:
        return dataclasses.replace(
            self,
            source=self.source.pin_memory(),
            lengths=self.lengths.pin_memory(),
            ids=self.ids.pin_memory(),
            plan=self.plan.pin_memory() if self.plan is not None else None,
        )


@dataclass
class Utterance:
    """One decoded item; ``seed`` = (data seed, epoch, index[, copy]) drives its random crops
    and (with the epoch and copy) its masks."""

    index: int
    wav: np.ndarray
    seed: tuple[int, ...]


@dataclass
class BadFile:
    """An item that could not be decoded, left for the collator to report."""

    index: int
    where: str
    reason: str


def crop_start(length: int, target: int, seed: tuple[int, ...] | None, align: int = 1) -> int:
    """Start of a ``target``-long window: random for a seed (training), 0 without (validation).

    ``align`` > 1 draws only starts that are multiples of it: with the feature encoder's stride
    (320) a stretch of audio maps to the same frames, and so to the same targets, every time.
    """
    if length <= target or seed is None:
        return 0
    choices = (length - target) // align + 1
    return align * int(np.random.default_rng(seed).integers(0, choices))


@dataclass(frozen=True)
class MaskPlanner:
    """Draws each batch's `MaskPlan` in the data loader, from the model's masking settings.

    Every draw of an utterance comes from a generator seeded by (seed, epoch, utterance), so the
    masks and distractors do not depend on the batch, rank or worker it lands in, and a resumed
    run draws what the uninterrupted run drew. ``per_epoch=False`` draws the same every epoch
    (validation, and a fixed noise seed for overfitting one batch).
    """

    model: Wav2Vec2Config
    seed: int
    per_epoch: bool = True

    @classmethod
    def for_model(cls, cfg: Wav2Vec2Config, seed: int, per_epoch: bool = True) -> MaskPlanner:
        return cls(cfg, seed, per_epoch)

    def __call__(self, lengths: torch.Tensor, width: int, items: list[Utterance]) -> MaskPlan:
        """The plan of a batch whose rows hold ``lengths`` of ``width`` samples."""
        layers = self.model.feature_encoder.conv_layers
        frames = frame_lengths(lengths, layers)
        num_frames = int(frame_lengths(torch.tensor([width]), layers)[0])
        keys = [
            (u.seed[1], u.index, *u.seed[3:]) if self.per_epoch else (u.index, *u.seed[3:])
            for u in items
        ]
        return draw_masks(self.model, frames, num_frames, PerUtteranceNoise(keys, self.seed))


class AudioDataset(Dataset):
    """Raw audio from a manifest, cropped to ``max_sample_size`` (only the window is decoded).

    Items are addressed by ``(index, epoch)`` (what `BucketBatchSampler` yields) or a plain
    index (epoch 0), so random crops depend only on (seed, epoch, index): identical on every
    worker, every rank and after a resume.
    """

    def __init__(
        self,
        manifest: Manifest,
        sample_rate: int = 16_000,
        resample: bool = True,
        downmix: bool = True,
        normalize: bool = False,
        max_sample_size: int | None = None,
        train: bool = True,
        seed: int = 1,
        crop_alignment: int = 1,
    ) -> None:
        self.manifest = manifest
        self.crop_alignment = crop_alignment
        self.sample_rate = sample_rate
        self.resample = resample
        self.downmix = downmix
        self.normalize = normalize
        self.max_sample_size = max_sample_size
        self.train = train
        self.seed = seed
        self._sizes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def sizes(self) -> np.ndarray:
        """(N,) lengths at the model's rate, capped at ``max_sample_size``: what a batch will
        hold."""
        if self._sizes is None:
            sizes = self.manifest.samples_at(self.sample_rate)
            if self.max_sample_size:
                np.minimum(sizes, self.max_sample_size, out=sizes)
            sizes.setflags(write=False)
            self._sizes = sizes
        return self._sizes

    def where(self, index: int) -> str:
        """How errors name item ``index`` (``manifest:line (path)``)."""
        return self.manifest.where(index)

    def source_of(self, index: int):
        """What `read_audio` reads for item ``index``: its file."""
        return self.manifest.audio_path(index)

    def __getitem__(self, key: int | tuple[int, ...]) -> Utterance | BadFile:
        """The decoded item, or a `BadFile` naming why it could not be used (the collator
        leaves it out and reports it; the run's ``data.on_bad_file`` decides what follows).

        ``key``: an index, or ``(index, epoch[, copy])`` as `BucketBatchSampler` yields (a
        corpus drawn more than once per epoch numbers its copies, and each gets its own crops
        and masks)."""
        index, epoch, copy = (*key, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
        where = self.where(index)
        seed = (self.seed, epoch, index) + ((copy,) if copy else ())
        crop = self.max_sample_size or None

        def read(window: int | None) -> np.ndarray:
            return read_audio(
                self.source_of(index),
                self.sample_rate,
                resample=self.resample,
                downmix=self.downmix,
                expected_samples=int(self.manifest.num_samples[index]),
                where=where,
                crop=window,
                start_of=lambda length: crop_start(
                    length, window, seed if self.train else None, self.crop_alignment
                ),
            )

        try:
            wav = read(crop)
            problem = sample_problem(wav)
            if problem is not None and problem.kind == "silent" and len(wav) == crop:
                # a quiet window of a longer file is fine; a file of zeros throughout is not
                problem = sample_problem(read(None))
        except SourceUnavailable:
            raise
        except DataError as e:
            return BadFile(index, where, str(e).removeprefix(f"{where}: "))
        if problem:
            return BadFile(index, where, problem.detail)
        if self.normalize:
            wav = normalize_wav(wav)
        return Utterance(index, wav, seed)


class Collator:
    """Stack utterances into a `Batch` and, with a planner, draw its masks and distractors.

    ``mode=crop`` crops every item to the shortest in the batch (fairseq's pretraining default,
    no padding at all; random windows in training, aligned to ``crop_alignment`` samples);
    ``mode=pad`` zero-pads to the longest and keeps each row's length. Items that could not be
    decoded are left out and named in ``Batch.bad_files``.
    """

    def __init__(
        self,
        mode: CollateMode | str = CollateMode.crop,
        train: bool = True,
        planner: MaskPlanner | None = None,
        crop_alignment: int = 1,
    ) -> None:
        self.mode = CollateMode.parse(mode, "data.collate")
        self.train = train
        self.planner = planner
        self.crop_alignment = crop_alignment

    def __call__(self, entries: list[Utterance | BadFile]) -> Batch:
        items = [u for u in entries if isinstance(u, Utterance)]
        bad = tuple(f"{b.where}: {b.reason}" for b in entries if isinstance(b, BadFile))
        if not items:
            empty = torch.zeros(0, dtype=torch.long)
            return Batch(torch.zeros(0, 0), empty, empty, bad_files=bad)
        lengths = [len(u.wav) for u in items]
        read = sum(lengths)
        if self.mode == CollateMode.crop:
            target = min(lengths)
            rows = []
            for u in items:
                seed = (*u.seed, 1) if self.train else None
                start = crop_start(len(u.wav), target, seed, self.crop_alignment)
                rows.append(u.wav[start : start + target])
            source = torch.from_numpy(np.stack(rows))
            lengths = [target] * len(items)
        else:
            source = torch.zeros(len(items), max(lengths))
            for row, u in enumerate(items):
                source[row, : len(u.wav)] = torch.from_numpy(u.wav)
        length_t = torch.tensor(lengths, dtype=torch.long)
        return Batch(
            source=source,
            lengths=length_t,
            ids=torch.tensor([u.index for u in items], dtype=torch.long),
            plan=self.planner(length_t, source.shape[1], items) if self.planner else None,
            padded=min(lengths) < source.shape[1],
            bad_files=bad,
            read_samples=read,
            kept_samples=sum(lengths),
        )
