"""The audio dataset: an utterance per manifest entry, decoded (only its crop window) when a
loader worker asks for it; a file that cannot be decoded is a `BadFile` the collator reports.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from w2v2_pretrain.data.audio import normalize as normalize_wav
from w2v2_pretrain.data.audio import read_audio, sample_problem
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.errors import DataError, SourceUnavailable


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
