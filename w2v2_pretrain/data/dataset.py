"""The audio dataset, the batch it collates to, and the checks run on a manifest at setup."""

from __future__ import annotations

import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import Dataset

from w2v2_pretrain.data.audio import normalize as normalize_wav
from w2v2_pretrain.data.audio import read_audio
from w2v2_pretrain.data.manifest import Manifest
from w2v2_pretrain.errors import DataError

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """A collated batch of raw audio.

    Shape:
        source: (B, L) float32 samples, zero-padded past each row's length.
        lengths: (B,) int64 valid samples per row.
        ids: (B,) int64 index of each utterance in its manifest.
    """

    source: torch.Tensor
    lengths: torch.Tensor
    ids: torch.Tensor

    @property
    def padding_mask(self) -> torch.Tensor:
        """(B, L) bool, True at padded samples."""
        steps = torch.arange(self.source.shape[1], device=self.source.device)
        return steps[None, :] >= self.lengths[:, None]

    def __len__(self) -> int:
        return self.source.shape[0]

    def pin_memory(self) -> Batch:
        return Batch(self.source.pin_memory(), self.lengths.pin_memory(), self.ids.pin_memory())


@dataclass
class Utterance:
    """One decoded item; ``seed`` = (data seed, epoch, index) drives its random crops."""

    index: int
    wav: np.ndarray
    seed: tuple[int, int, int]


def crop_start(length: int, target: int, seed: tuple[int, ...] | None) -> int:
    """Start of a ``target``-long window: random for a seed (training), 0 without (validation)."""
    if length <= target or seed is None:
        return 0
    return int(np.random.default_rng(seed).integers(0, length - target + 1))


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
        skip_bad: bool = False,
    ) -> None:
        self.manifest = manifest
        self.skip_bad = skip_bad
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
        """(N,) manifest lengths, capped at ``max_sample_size``: what a batch will hold."""
        sizes = np.array([e.num_samples for e in self.manifest.entries], dtype=np.int64)
        if self.max_sample_size:
            sizes = np.minimum(sizes, self.max_sample_size)
        return sizes

    def __getitem__(self, key: int | tuple[int, int]) -> Utterance | None:
        """The decoded item; None for a bad file when ``skip_bad`` (the collator drops it)."""
        index, epoch = key if isinstance(key, tuple) else (key, 0)
        entry = self.manifest.entries[index]
        try:
            wav = read_audio(
                self.manifest.audio_path(index),
                self.sample_rate,
                resample=self.resample,
                downmix=self.downmix,
                expected_samples=entry.num_samples,
                where=self.manifest.where(index),
            )
        except DataError as e:
            if not self.skip_bad:
                raise
            log.warning("skipping %s", e)
            return None
        seed = (self.seed, epoch, index)
        if self.max_sample_size and len(wav) > self.max_sample_size:
            start = crop_start(len(wav), self.max_sample_size, seed if self.train else None)
            wav = wav[start : start + self.max_sample_size]
        if self.normalize:
            wav = normalize_wav(wav)
        return Utterance(index, wav, seed)


class Collator:
    """Stack utterances into a `Batch`.

    ``mode="crop"`` crops every item to the shortest in the batch (fairseq's pretraining default,
    no padding at all; random windows in training); ``mode="pad"`` zero-pads to the longest and
    keeps each row's length.
    """

    def __init__(self, mode: str = "crop", train: bool = True) -> None:
        if mode not in ("crop", "pad"):
            raise DataError(f"data.collate: expected 'crop' or 'pad', got {mode!r}")
        self.mode = mode
        self.train = train

    def __call__(self, items: list[Utterance | None]) -> Batch:
        items = [u for u in items if u is not None]  # bad files skipped by the dataset
        if not items:
            return Batch(
                torch.zeros(0, 0),
                torch.zeros(0, dtype=torch.long),
                torch.zeros(0, dtype=torch.long),
            )
        lengths = [len(u.wav) for u in items]
        if self.mode == "crop":
            target = min(lengths)
            rows = []
            for u in items:
                start = crop_start(len(u.wav), target, (*u.seed, 1) if self.train else None)
                rows.append(u.wav[start : start + target])
            source = torch.from_numpy(np.stack(rows))
            lengths = [target] * len(items)
        else:
            source = torch.zeros(len(items), max(lengths))
            for row, u in enumerate(items):
                source[row, : len(u.wav)] = torch.from_numpy(u.wav)
        return Batch(
            source=source,
            lengths=torch.tensor(lengths, dtype=torch.long),
            ids=torch.tensor([u.index for u in items], dtype=torch.long),
        )


def _check_file(args: tuple[str, int, bool]) -> tuple[str, str] | None:
    """(kind, detail) of what is wrong with one manifest entry, or None."""
    path, expected, read_header = args
    if not os.path.isfile(path):
        return (
            ("missing", "file not found")
            if not os.path.exists(path)
            else ("not a file", "not a regular file")
        )
    if not read_header:
        return None
    try:
        info = sf.info(path)
    except Exception as e:
        return "unreadable", f"unreadable audio: {str(e).splitlines()[0]}"
    if info.frames <= 0:
        return "empty", "empty audio (0 samples)"
    if info.frames != expected:
        return "wrong length", (
            f"manifest says {expected} samples but the file has {info.frames} "
            "(truncated or replaced file? rebuild the manifest)"
        )
    return None


def check_manifest(
    manifest: Manifest,
    min_sample_size: int,
    receptive_field: int,
    verify: bool = True,
    on_bad_file: str = "error",
    workers: int = 8,
) -> tuple[Manifest, Counter]:
    """Return the usable entries and a count of what was dropped, by reason.

    Clips shorter than ``min_sample_size`` are dropped and counted. Files that are missing,
    unreadable, empty, of the wrong length (``verify`` reads every header) or shorter than the
    feature encoder's receptive field are bad files: a `DataError` naming the first one, or with
    ``on_bad_file="skip"`` dropped, counted and logged.
    """
    if on_bad_file not in ("error", "skip"):
        raise DataError(f"data.on_bad_file: expected 'error' or 'skip', got {on_bad_file!r}")
    jobs = [
        (str(manifest.audio_path(i)), e.num_samples, verify)
        for i, e in enumerate(manifest.entries)
    ]
    with ThreadPoolExecutor(max(1, workers)) as pool:
        problems = list(pool.map(_check_file, jobs, chunksize=64))
    dropped: Counter = Counter()
    keep = []
    for i, (entry, problem) in enumerate(zip(manifest.entries, problems, strict=True)):
        if problem is None and entry.num_samples < receptive_field:
            problem = (
                "too short",
                (
                    f"{entry.num_samples} samples, shorter than the feature encoder's receptive "
                    f"field ({receptive_field} samples)"
                ),
            )
        if problem is not None:
            kind, detail = problem
            if on_bad_file == "error":
                raise DataError(
                    f"{manifest.where(i)}: {detail} (data.on_bad_file=skip skips bad files)"
                )
            log.warning("skipping %s: %s", manifest.where(i), detail)
            dropped[kind] += 1
            continue
        if entry.num_samples < min_sample_size:
            dropped[f"shorter than min_sample_size={min_sample_size}"] += 1
            continue
        keep.append(i)
    if not keep and len(manifest):
        raise DataError(f"{manifest.source}: no usable entries (dropped {dict(dropped)})")
    if dropped:
        log.warning(
            "%s: kept %d of %d entries; dropped %s",
            manifest.source,
            len(keep),
            len(manifest),
            dict(dropped),
        )
    return manifest.select(keep), dropped
