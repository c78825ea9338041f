"""Representations of a model for every utterance of a manifest (or one file): one (T, D)
``.npy`` per utterance under an output folder that mirrors the manifest's paths (``w2v2-extract``).

A file is read and run whole, or, when longer than ``window_seconds``, in windows of that many
seconds that each also see ``window_overlap`` seconds on either side, read from the file one
window at a time (`windows`); every output is written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import torch

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.data.audio import AudioInfo, format_problem, normalize, read_audio
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.models import Wav2Vec2Model
from w2v2_pretrain.models.feature_encoder import frame_lengths

WINDOWING = (
    "Windowing changes the representations: the context network (and the group-norm feature "
    "encoder's normalisation) sees only a window and its overlap, not the whole utterance; the "
    "frames are kept from each window's middle, so the file's frame count is the same."
)


@dataclass(frozen=True)
class ExtractOptions:
    """How `extract` runs: the input normalisation (None: as the model was trained, its
    recorded input contract), the Transformer layer (1-based; None: the final output), the
    device, the longest file run whole, and the windows of longer files."""

    normalize: bool | None = None
    layer: int | None = None
    device: str = "cpu"
    max_seconds: float = 600.0
    window_seconds: float | None = None
    window_overlap: float = 2.0

    def checked(self, model: Wav2Vec2Model) -> ExtractOptions:
        """These options, checked against ``model`` (a one-line `DataError` naming the
        option), with ``normalize`` resolved."""
        depth = model.cfg.context_network.num_layers
        if self.layer is not None and not 1 <= self.layer <= depth:
            raise DataError(f"--layer {self.layer}: the model has layers 1..{depth}")
        if self.max_seconds <= 0:
            raise DataError(f"--max-seconds must be positive, got {self.max_seconds:g}")
        per_frame = model.cfg.stride / model.cfg.input.sample_rate
        if self.window_seconds is not None and self.window_seconds < per_frame:
            raise DataError(
                f"--window-seconds must be at least one frame ({per_frame:g} s), "
                f"got {self.window_seconds:g}"
            )
        if self.window_overlap < 0:
            raise DataError(f"--window-overlap must be >= 0, got {self.window_overlap:g}")
        if self.normalize is not None:
            return self
        return dataclasses.replace(self, normalize=model.cfg.input.normalize)


@dataclass(frozen=True)
class Job:
    """One utterance to extract: its file, the manifest's length (None for a lone file), how
    errors name it, and its output path under OUT_DIR."""

    path: Path
    expected_samples: int | None
    where: str
    out: Path


def _out_name(root: Path, rel: str, where: str) -> Path:
    """``rel`` (relative, or absolute inside the root) as a path under OUT_DIR: relative to the
    root, without the audio extension, so nothing is written outside OUT_DIR."""
    full = os.path.normpath(os.path.join(root, rel))
    inside = os.path.relpath(full, root)
    if inside.startswith(".."):  # an absolute path through a link to the root
        inside = os.path.relpath(Path(full).parent.resolve() / Path(full).name, root)
    if inside.startswith(".."):
        raise DataError(
            f"{where}: outside the root {root}, so it has no place under OUT_DIR, which "
            "mirrors the paths under the root"
        )
    return Path(inside).with_suffix(".npy")


def jobs_for(src: Path) -> list[Job]:
    """Every utterance of a manifest (``.tsv``), each written at its path; or the one file.

    Two lines that would write one output (``a.flac`` and ``a.wav``) are refused up front.
    """
    if src.suffix != ".tsv":
        return [Job(src, None, str(src), Path(src.stem + ".npy"))]
    manifest = read_manifest(src)
    jobs, taken = [], {}
    for i in range(len(manifest)):
        where = manifest.where(i)
        out = _out_name(manifest.roots[int(manifest.corpus[i])], manifest.path(i), where)
        if out in taken:
            raise DataError(
                f"{where}: would write {out}, as {taken[out]} does (the output keeps the path "
                "without its extension): list only one of them"
            )
        taken[out] = where
        jobs.append(Job(manifest.audio_path(i), int(manifest.num_samples[i]), where, out))
    return jobs


def _run(model: Wav2Vec2Model, wav: np.ndarray, opts: ExtractOptions) -> np.ndarray:
    """(T, D) representations of ``(L,)`` samples."""
    with torch.inference_mode():
        feats = model.extract(torch.from_numpy(wav)[None].to(opts.device), num_layers=opts.layer)
    return feats.hidden[0].float().cpu().numpy()


def _whole(model: Wav2Vec2Model, job: Job, opts: ExtractOptions) -> np.ndarray:
    """(T, D) representations of one utterance read in full."""
    cfg = model.cfg
    wav = read_audio(
        job.path, cfg.input.sample_rate, expected_samples=job.expected_samples, where=job.where
    )
    if len(wav) < cfg.receptive_field:
        raise DataError(
            f"{job.where}: {len(wav)} samples, shorter than the feature encoder's "
            f"receptive field ({cfg.receptive_field} samples)"
        )
    return _run(model, normalize(wav) if opts.normalize else wav, opts)


@dataclass(frozen=True)
class Window:
    """Frames ``[keep_start, keep_end)`` of the file come from the model run on samples
    ``[start, end)``, whose first frame is the file's frame ``first_frame``."""

    start: int
    end: int
    first_frame: int
    keep_start: int
    keep_end: int


def windows(
    num_frames: int, window: int, overlap: int, stride: int, receptive_field: int
) -> list[Window]:
    """Windows of ``window`` frames, each run with ``overlap`` frames of context either side.

    Every window starts on a frame boundary (a multiple of ``stride`` samples), so its frames
    are the file's frames: frame t sees samples ``[t * stride, t * stride + receptive_field)``.
    """
    out = []
    for keep_start in range(0, num_frames, window):
        keep_end = min(num_frames, keep_start + window)
        first, last = max(0, keep_start - overlap), min(num_frames, keep_end + overlap)
        start, end = first * stride, (last - 1) * stride + receptive_field
        out.append(Window(start, end, first, keep_start, keep_end))
    return out


def _frames(model: Wav2Vec2Model, samples: int) -> int:
    """Frames the feature encoder makes of ``samples``."""
    conv = model.cfg.feature_encoder.conv_layers
    return int(frame_lengths(torch.tensor([samples]), conv)[0])


def _windowed(model: Wav2Vec2Model, job: Job, num_frames: int, opts: ExtractOptions) -> Iterator:
    """The (T, D) rows of one long file, window by window, each read from the file on its own
    (``SoundFile.seek``/``read``): memory stays that of one window."""
    cfg = model.cfg
    per_frame = cfg.stride / cfg.input.sample_rate
    window = max(1, round(opts.window_seconds / per_frame))
    overlap = round(opts.window_overlap / per_frame)
    with sf.SoundFile(str(job.path)) as f:
        mean, std = _moments(f) if opts.normalize else (0.0, 1.0)
        for w in windows(num_frames, window, overlap, cfg.stride, cfg.receptive_field):
            f.seek(w.start)
            wav = f.read(w.end - w.start, dtype="float32", always_2d=True).mean(axis=1)
            wav = ((wav - mean) / std).astype(np.float32)
            hidden = _run(model, np.ascontiguousarray(wav), opts)
            yield hidden[w.keep_start - w.first_frame : w.keep_end - w.first_frame]


def _moments(f, block: int = 1 << 20) -> tuple[float, float]:
    """Mean and standard deviation (+1e-5 variance, as `normalize`) of a whole file, read in
    blocks: windows are normalised as the whole utterance is."""
    n, total, squares = 0, 0.0, 0.0
    f.seek(0)
    while True:
        x = f.read(block, dtype="float64", always_2d=True).mean(axis=1)
        if not len(x):
            break
        n, total, squares = n + len(x), total + x.sum(), squares + (x * x).sum()
    mean = total / n
    return mean, math.sqrt(max(squares / n - mean * mean, 0.0) + 1e-5)


def _write_rows(f: IO, rows: Iterator, shape: tuple[int, int]) -> None:
    """A float32 ``.npy`` of ``shape`` written a block of rows at a time (what ``np.save``
    writes for the whole array)."""
    header = {"descr": "<f4", "fortran_order": False, "shape": shape}
    np.lib.format.write_array_header_1_0(f, header)
    written = 0
    for chunk in rows:
        f.write(np.ascontiguousarray(chunk, dtype="<f4").tobytes())
        written += len(chunk)
    if written != shape[0]:  # the windows tile the frames exactly; never a short file
        raise RuntimeError(f"wrote {written} of {shape[0]} frames")


def extract(model: Wav2Vec2Model, job: Job, path: Path, opts: ExtractOptions) -> None:
    """One utterance to ``path``, atomically: whole, or in windows if it is longer than one."""
    cfg = model.cfg
    rate = cfg.input.sample_rate
    try:  # the header: is the file long enough to need windows, or too long for one run
        info = sf.info(str(job.path))
    except Exception:
        info = None  # read_audio names the cause
    seconds = info.frames / info.samplerate if info else 0.0
    if info is None or opts.window_seconds is None or seconds <= opts.window_seconds:
        if seconds > opts.max_seconds:
            raise DataError(
                f"{job.where}: {seconds:.1f} s long, over --max-seconds {opts.max_seconds:g}: "
                "--window-seconds S extracts it in windows (each window sees only its own "
                "context), or raise --max-seconds"
            )
        array = _whole(model, job, opts)
        with atomic_open(path) as f:  # a killed extraction never leaves half a file
            np.save(f, array)
        return
    problem = format_problem(
        AudioInfo(info.frames, info.samplerate, info.channels),
        rate,
        resample=False,
        expected_samples=job.expected_samples,
    )
    if problem and info.samplerate != rate:
        raise DataError(
            f"{job.where}: {problem.detail}; windowed extraction reads files at the model's "
            "rate: resample the file first"
        )
    if problem:
        raise DataError(f"{job.where}: {problem.detail}")
    num_frames = _frames(model, info.frames)
    rows = _windowed(model, job, num_frames, opts)
    with atomic_open(path) as f:
        _write_rows(f, rows, (num_frames, cfg.context_network.embed_dim))
