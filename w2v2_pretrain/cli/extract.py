"""``w2v2-extract MODEL INPUT OUT_DIR``: one (T, D) ``.npy`` of representations per utterance."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING

import numpy as np
import torch

from w2v2_pretrain.atomic import atomic_open, writable_dir
from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import DataError

if TYPE_CHECKING:
    from w2v2_pretrain.models import Wav2Vec2Model

WINDOWING = (
    "Windowing changes the representations: the context network (and the group-norm feature "
    "encoder's normalisation) sees only a window and its overlap, not the whole utterance; the "
    "frames are kept from each window's middle, so the file's frame count is the same."
)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2v2-extract",
        description="Write the context network's output (or Transformer layer N) for every "
        "utterance as OUT_DIR/<path without its extension>.npy of shape (frames, dim); a "
        "manifest's paths are mirrored under OUT_DIR relative to its root.",
        epilog=WINDOWING,
    )
    p.add_argument("model", help="checkpoint, model state file or transformers directory")
    p.add_argument("input", help="an audio file, or a manifest (.tsv)")
    p.add_argument("out_dir")
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="output of Transformer layer N (1-based; default: the final output)",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero-mean unit-variance input; default: as the model was trained "
        "(its recorded input contract)",
    )
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="refuse files longer than this unless --window-seconds is given: memory grows "
        "with the length (default: 600)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=None,
        help="extract files longer than this in windows of this length, read from the file "
        "one window at a time (default: whole files). See the note below",
    )
    p.add_argument(
        "--window-overlap",
        type=float,
        default=2.0,
        help="seconds of audio each window also sees on either side; the frames there are "
        "taken from the neighbouring window (default: 2)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if any)")
    return p


def _device(name: str | None) -> str:
    """The device to run on, checked: a GPU that is not there is one line, not a traceback."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DataError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise DataError(f"--device {name}: this machine has {count} GPU(s), cuda:0..")
    elif dev.type != "cpu":
        raise DataError(f"--device {name}: only cpu and cuda are supported")
    return name


@dataclass(frozen=True)
class _Job:
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


def _jobs(src: Path) -> list[_Job]:
    """Every utterance of a manifest (``.tsv``), each written at its path; or the one file.

    Two lines that would write one output (``a.flac`` and ``a.wav``) are refused up front.
    """
    from w2v2_pretrain.data.manifest import read_manifest

    if src.suffix != ".tsv":
        return [_Job(src, None, str(src), Path(src.stem + ".npy"))]
    manifest = read_manifest(src)
    jobs, taken = [], {}
    for i, entry in enumerate(manifest.entries):
        where = manifest.where(i)
        out = _out_name(manifest.roots[entry.corpus], entry.path, where)
        if out in taken:
            raise DataError(
                f"{where}: would write {out}, as {taken[out]} does (the output keeps the path "
                "without its extension): list only one of them"
            )
        taken[out] = where
        jobs.append(_Job(manifest.audio_path(i), entry.num_samples, where, out))
    return jobs


@dataclass(frozen=True)
class _Options:
    normalize: bool
    layer: int | None
    device: str
    max_seconds: float
    window_seconds: float | None
    window_overlap: float


def _run(model: Wav2Vec2Model, wav: np.ndarray, opts: _Options) -> np.ndarray:
    """(T, D) representations of ``(L,)`` samples."""
    with torch.inference_mode():
        feats = model.extract(torch.from_numpy(wav)[None].to(opts.device), num_layers=opts.layer)
    return feats.hidden[0].float().cpu().numpy()


def _whole(model: Wav2Vec2Model, job: _Job, opts: _Options) -> np.ndarray:
    """(T, D) representations of one utterance read in full."""
    from w2v2_pretrain.data.audio import normalize, read_audio

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
    from w2v2_pretrain.models.feature_encoder import frame_lengths

    conv = model.cfg.feature_encoder.conv_layers
    return int(frame_lengths(torch.tensor([samples]), conv)[0])


def _windowed(model: Wav2Vec2Model, job: _Job, num_frames: int, opts: _Options) -> Iterator:
    """The (T, D) rows of one long file, window by window, each read from the file on its own
    (``SoundFile.seek``/``read``): memory stays that of one window."""
    import soundfile as sf

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


def _extract_to(model: Wav2Vec2Model, job: _Job, path: Path, opts: _Options) -> None:
    """One utterance to ``path``, atomically: whole, or in windows if it is longer than one."""
    import soundfile as sf

    from w2v2_pretrain.data.audio import AudioInfo, format_problem

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


def _options(args: argparse.Namespace, model: Wav2Vec2Model) -> _Options:
    """The run's options, checked against the model."""
    depth = model.cfg.context_network.num_layers
    if args.layer is not None and not 1 <= args.layer <= depth:
        raise DataError(f"--layer {args.layer}: the model has layers 1..{depth}")
    if args.max_seconds <= 0:
        raise DataError(f"--max-seconds must be positive, got {args.max_seconds:g}")
    seconds_per_frame = model.cfg.stride / model.cfg.input.sample_rate
    if args.window_seconds is not None and args.window_seconds < seconds_per_frame:
        raise DataError(
            f"--window-seconds must be at least one frame ({seconds_per_frame:g} s), "
            f"got {args.window_seconds:g}"
        )
    if args.window_overlap < 0:
        raise DataError(f"--window-overlap must be >= 0, got {args.window_overlap:g}")
    normalize = model.cfg.input.normalize if args.normalize is None else args.normalize
    return _Options(
        normalize,
        args.layer,
        args.device,
        args.max_seconds,
        args.window_seconds,
        args.window_overlap,
    )


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    args.device = _device(args.device)
    out_dir = writable_dir(args.out_dir, "OUT_DIR")
    jobs = _jobs(Path(args.input))

    from w2v2_pretrain.checkpoint import load_model

    model = load_model(args.model).to(args.device)
    opts = _options(args, model)
    for job in jobs:
        _extract_to(model, job, out_dir / job.out, opts)
    print(
        f"wrote {len(jobs)} files of dim {model.cfg.context_network.embed_dim} to {out_dir} "
        f"(input: {model.cfg.input.sample_rate} Hz, normalized: {opts.normalize})"
    )


if __name__ == "__main__":
    main()
