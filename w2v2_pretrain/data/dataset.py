"""The audio dataset, the batch it collates to, and the checks run on a manifest at setup."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
from torch.utils.data import Dataset

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.data.audio import (
    AudioInfo,
    AudioProblem,
    format_problem,
    inspect_audio,
    read_audio,
    sample_problem,
)
from w2v2_pretrain.data.audio import normalize as normalize_wav
from w2v2_pretrain.data.manifest import Manifest
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.feature_encoder import frame_lengths
from w2v2_pretrain.models.masking import MaskPlan, draw_masks
from w2v2_pretrain.models.noise import PerUtteranceNoise

log = run_logger(__name__)  # every rank checks the same manifest: said once


class CollateMode(Choice):
    """How a batch of different lengths becomes one tensor (``data.collate``)."""

    crop = "crop"
    """Crop every clip to the shortest (fairseq's pretraining default: no padding)."""
    pad = "pad"
    """Zero-pad to the longest and pass the lengths (the model masks the padding)."""


class BadFilePolicy(Choice):
    """What a file that cannot be used does to the run (``data.on_bad_file``)."""

    error = "error"
    """Stop, naming the file (in training: with a checkpoint to resume from)."""
    skip = "skip"
    """Drop it, name it in the log and in ``bad_files.tsv``, count it, go on."""


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
    """

    source: torch.Tensor
    lengths: torch.Tensor
    ids: torch.Tensor
    plan: MaskPlan | None = None
    padded: bool = False
    bad_files: tuple[str, ...] = ()

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, L) bool, True at padded samples."""
        steps = torch.arange(self.source.shape[1], device=self.source.device)
        return steps[None, :] >= self.lengths[:, None]

    def __len__(self) -> int:
        return self.source.shape[0]

    def pin_memory(self) -> Batch:
        return Batch(
            self.source.pin_memory(),
            self.lengths.pin_memory(),
            self.ids.pin_memory(),
            self.plan.pin_memory() if self.plan is not None else None,
            self.padded,
            self.bad_files,
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
    """Raw audio from a manifest, cropped to ``max_sample_size``.

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

    def __len__(self) -> int:
        return len(self.manifest)

    @property
    def sizes(self) -> np.ndarray:
        """(N,) lengths at the model's rate, capped at ``max_sample_size``: what a batch will
        hold."""
        sizes = np.array(
            [e.samples_at(self.sample_rate) for e in self.manifest.entries], dtype=np.int64
        )
        if self.max_sample_size:
            sizes = np.minimum(sizes, self.max_sample_size)
        return sizes

    def __getitem__(self, key: int | tuple[int, ...]) -> Utterance | BadFile:
        """The decoded item, or a `BadFile` naming why it could not be used (the collator
        leaves it out and reports it; the run's ``data.on_bad_file`` decides what follows).

        ``key``: an index, or ``(index, epoch[, copy])`` as `BucketBatchSampler` yields (a
        corpus drawn more than once per epoch numbers its copies, and each gets its own crops
        and masks)."""
        index, epoch, copy = (*key, 0)[:3] if isinstance(key, tuple) else (key, 0, 0)
        entry = self.manifest.entries[index]
        where = self.manifest.where(index)
        try:
            wav = read_audio(
                self.manifest.audio_path(index),
                self.sample_rate,
                resample=self.resample,
                downmix=self.downmix,
                expected_samples=entry.num_samples,
                where=where,
            )
        except DataError as e:
            return BadFile(index, where, str(e).removeprefix(f"{where}: "))
        problem = sample_problem(wav)
        if problem:
            return BadFile(index, where, problem.detail)
        seed = (self.seed, epoch, index) + ((copy,) if copy else ())
        if self.max_sample_size and len(wav) > self.max_sample_size:
            start = crop_start(
                len(wav),
                self.max_sample_size,
                seed if self.train else None,
                self.crop_alignment,
            )
            wav = wav[start : start + self.max_sample_size]
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
        )


class VerifyLevel(Choice):
    """How closely the setup checks every manifest entry (``data.verify``)."""

    none = "none"
    """Only that each file exists."""
    header = "header"
    """Read every header: unreadable, empty and wrong-length files (true means this)."""
    decode = "decode"
    """Decode every file in full: also truncated FLACs, NaN/Inf and all-zero audio."""

    @classmethod
    def parse(cls, value, field: str) -> VerifyLevel:
        if isinstance(value, bool):
            return cls.header if value else cls.none
        return super().parse(value, field)


def _check_file(
    path: str,
    expected: int,
    *,
    verify: VerifyLevel,
    sample_rate: int,
    resample: bool,
    downmix: bool,
) -> AudioInfo | AudioProblem | None:
    """What is wrong with one manifest entry, else what its header says (None if no header
    was read). ``resample``/``downmix`` off: another rate or several channels is a problem."""
    if not os.path.isfile(path):
        if not os.path.exists(path):
            return AudioProblem("missing", "file not found")
        return AudioProblem("not a file", "not a regular file")
    if verify == VerifyLevel.none:
        return None
    found = inspect_audio(path, decode=verify == VerifyLevel.decode)
    if isinstance(found, AudioProblem):
        return found
    return format_problem(found, sample_rate, resample, downmix, expected) or found


def _check_files(
    manifest: Manifest,
    check: Callable[[str, int], AudioInfo | AudioProblem | None],
    workers: int,
    progress: str | None,
) -> list[AudioInfo | AudioProblem | None]:
    """``check(path, num_samples)`` of every entry in parallel threads, in manifest order;
    with a progress bar titled ``progress``."""
    paths = [str(manifest.audio_path(i)) for i in range(len(manifest))]
    expected = [e.num_samples for e in manifest.entries]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(check, paths, expected, chunksize=16)
        if progress and paths:
            from tqdm import tqdm

            results = tqdm(results, total=len(paths), desc=progress, unit="file")
        return list(results)


def _too_short(length: int, sample_rate: int, receptive_field: int) -> AudioProblem | None:
    """A clip the feature encoder cannot make one frame of."""
    if length >= receptive_field:
        return None
    return AudioProblem(
        "too short",
        f"{length} samples at {sample_rate} Hz, shorter than the feature encoder's receptive "
        f"field ({receptive_field} samples)",
    )


@dataclass
class _Triage:
    """Where `check_manifest` puts each entry: kept, dropped (counted by reason) or, being a
    bad file skipped under ``on_bad_file=skip``, also named (``where: reason``)."""

    keep: list[int] = field(default_factory=list)
    dropped: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)

    def bad_file(self, where: str, problem: AudioProblem, on_bad_file: BadFilePolicy) -> None:
        if on_bad_file == BadFilePolicy.error:
            raise DataError(f"{where}: {problem.detail} (data.on_bad_file=skip skips bad files)")
        log.warning("skipping %s: %s", where, problem.detail)
        self.skipped.append(f"{where}: {problem.detail}")
        self.dropped[problem.kind] += 1

    def summarise(self, manifest: Manifest) -> None:
        """Stop if nothing is left of a manifest that had entries; else log what was dropped."""
        if not self.keep and len(manifest):
            raise DataError(f"{manifest.name}: no usable entries (dropped {dict(self.dropped)})")
        if self.dropped:
            log.warning(
                "%s: kept %d of %d entries; dropped %s",
                manifest.name,
                len(self.keep),
                len(manifest),
                dict(self.dropped),
            )


def check_manifest(
    manifest: Manifest,
    min_sample_size: int,
    receptive_field: int,
    verify: VerifyLevel | bool | str = VerifyLevel.header,
    on_bad_file: BadFilePolicy | str = BadFilePolicy.error,
    workers: int = 8,
    progress: bool = False,
    sample_rate: int = 16_000,
    resample: bool = True,
    downmix: bool = True,
) -> tuple[Manifest, Counter, list[str]]:
    """Return the usable entries, a count of what was dropped by reason, and the bad files
    skipped (``where: reason``).

    Clips shorter than ``min_sample_size`` are dropped and counted. Files that are missing,
    unreadable, empty, of the wrong length (``verify=header`` reads every header), that fail to
    decode or hold NaN/Inf or only zeros (``verify=decode``), or that are shorter than the
    feature encoder's receptive field are bad files: a `DataError` naming the first one, or with
    ``on_bad_file=skip`` dropped, counted and logged. Files are checked in parallel threads.
    Lengths are compared at ``sample_rate`` (the rate the model sees): a header pass records
    each file's own rate, so an 8 kHz file counts its samples after resampling; without
    ``resample`` (or ``downmix``) another rate (or several channels) is a bad file.
    """
    verify = VerifyLevel.parse(verify, "data.verify")
    on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
    check = partial(
        _check_file, verify=verify, sample_rate=sample_rate, resample=resample, downmix=downmix
    )
    found = _check_files(manifest, check, workers, f"{verify} check" if progress else None)
    manifest = manifest.with_rates(
        [f.sample_rate if isinstance(f, AudioInfo) else None for f in found]
    )
    triage = _Triage()
    for i, (entry, f) in enumerate(zip(manifest.entries, found, strict=True)):
        length = entry.samples_at(sample_rate)
        problem = (
            f if isinstance(f, AudioProblem) else _too_short(length, sample_rate, receptive_field)
        )
        if problem is not None:
            triage.bad_file(manifest.where(i), problem, on_bad_file)
        elif length < min_sample_size:
            triage.dropped[f"shorter than min_sample_size={min_sample_size}"] += 1
        else:
            triage.keep.append(i)
    triage.summarise(manifest)
    return manifest.select(triage.keep), triage.dropped, triage.skipped
