"""Audio decoding with soundfile: float32 mono at the model's sample rate."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import soundfile as sf
import torch

from w2v2_pretrain.errors import DataError

RESAMPLER = {"lowpass_filter_width": 6, "rolloff": 0.99, "resampling_method": "sinc_interp_hann"}
"""The resampler's settings (torchaudio's defaults, given explicitly): `_window` sizes a crop's
margin from the same two numbers, so a windowed read always equals the cropped full decode."""


@dataclass(frozen=True)
class AudioInfo:
    """What a file holds: frames and rate (at the file's own rate), and channels."""

    frames: int
    sample_rate: int
    channels: int = 1


@dataclass(frozen=True)
class AudioProblem:
    """Why a file cannot be used: a short kind (for counts) and a one-line detail."""

    kind: str
    detail: str


def _reason(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def sample_problem(wav: np.ndarray, allow_silence: bool = False) -> AudioProblem | None:
    """Why these samples cannot be learned from (non-finite or all zero), or None."""
    if not np.isfinite(wav).all():
        return AudioProblem("non-finite", "contains NaN or Inf samples")
    if not allow_silence and not wav.any():
        return AudioProblem("silent", "all-zero audio (digital silence)")
    return None


def format_problem(
    info: AudioInfo,
    sample_rate: int,
    resample: bool = True,
    downmix: bool = True,
    expected_samples: int | None = None,
) -> AudioProblem | None:
    """Why a file of this shape cannot be used as the run reads it, or None: what
    `read_audio` refuses, known from the header alone (so the setup check says it first).

    ``expected_samples`` is the manifest's length at the file's own rate; without
    ``resample`` another rate, and without ``downmix`` several channels, is a problem.
    """
    if info.frames == 0:
        return AudioProblem("empty", "empty audio (0 samples)")
    if expected_samples is not None and info.frames != expected_samples:
        return AudioProblem(
            "wrong length",
            f"manifest says {expected_samples} samples but the file has {info.frames} "
            "(truncated or replaced file? rebuild the manifest)",
        )
    if not downmix and info.channels > 1:
        return AudioProblem(
            "channels", f"{info.channels} channels; set data.downmix=true to average them"
        )
    if not resample and info.sample_rate != sample_rate:
        return AudioProblem(
            "sample rate",
            f"sample rate {info.sample_rate} Hz, expected {sample_rate} Hz; "
            "set data.resample=true to resample",
        )
    return None


def inspect_audio(path: str | Path, decode: bool = False) -> AudioInfo | AudioProblem:
    """The file's frames and rate, or why it cannot be used.

    Reads the header only, or with ``decode`` every sample: a FLAC cut short keeps a valid
    header and fails only when decoded, and NaN/Inf or all-zero samples show only then.
    """
    path = str(path)
    try:
        info = sf.info(path)
    except Exception as e:  # libsndfile's message says what is wrong with the file
        if not Path(path).exists():
            return AudioProblem("missing", "file not found")
        return AudioProblem("unreadable", f"unreadable audio: {_reason(e)}")
    if info.frames <= 0:
        return AudioProblem("empty", "empty audio (0 samples)")
    if decode:
        try:
            wav, _ = sf.read(path, dtype="float32", always_2d=True)
        except Exception as e:
            return AudioProblem(
                "undecodable", f"cannot be decoded: {_reason(e)} (truncated or corrupt?)"
            )
        if len(wav) != info.frames:
            return AudioProblem(
                "undecodable",
                f"header says {info.frames} samples but {len(wav)} decode (truncated?)",
            )
        problem = sample_problem(wav)
        if problem:
            return problem
    return AudioInfo(info.frames, info.samplerate, info.channels)


def _decode_window(
    path: str | Path | IO[bytes],
    where: str,
    sample_rate: int,
    resample: bool,
    downmix: bool,
    expected_samples: int | None,
    crop: int | None,
    start_of: Callable[[int], int] | None,
) -> tuple[np.ndarray, AudioInfo, slice]:
    """The decoded frames `read_audio` needs, at the file's own rate, (F, channels); the
    file's header; and the part of the resampled result that is the window."""
    try:
        with sf.SoundFile(path if hasattr(path, "read") else str(path)) as f:
            info = AudioInfo(f.frames, f.samplerate, f.channels)
            problem = format_problem(info, sample_rate, resample, downmix, expected_samples)
            if problem:
                raise DataError(f"{where}: {problem.detail}")
            lo, hi, keep = _window(info, sample_rate, crop, start_of)
            f.seek(lo)
            wav = f.read(hi - lo, dtype="float32", always_2d=True)
    except DataError:
        raise
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except Exception as e:
        raise DataError(
            f"{where}: unreadable audio: {_reason(e)} (corrupt, truncated or not audio?)"
        ) from None
    if len(wav) != hi - lo:
        raise DataError(
            f"{where}: unreadable audio: {lo + len(wav)} of {info.frames} samples decode "
            "(corrupt, truncated or not audio?)"
        )
    return wav, info, keep


def read_audio(
    path: str | Path | IO[bytes],
    sample_rate: int = 16_000,
    resample: bool = True,
    downmix: bool = True,
    expected_samples: int | None = None,
    where: str | None = None,
    crop: int | None = None,
    start_of: Callable[[int], int] | None = None,
) -> np.ndarray:
    """Read one file as float32 mono at ``sample_rate``, or only a window of it.

    Args:
        path: audio file soundfile can read (FLAC, WAV, OGG, ...), or such a file's bytes
            as a seekable binary stream (a shard's member).
        sample_rate: rate the model expects (16 kHz for wav2vec 2.0).
        resample: resample other rates with torchaudio; False refuses them.
        downmix: average channels to mono; False refuses multi-channel files.
        expected_samples: the manifest's length (at the file's own rate); a file with another
            length (truncated, replaced) is an error.
        where: how to name the input in errors (default: the path).
        crop: read only a window of this many samples (at ``sample_rate``) when the file is
            longer; ``start_of(length)`` gives its start from the length at ``sample_rate``
            (default 0). Only the window is decoded (soundfile seeks), and a file at another
            rate decodes its window plus the resampler's margin: the result equals cropping
            the full decode.

    Returns:
        ``(L,)`` float32 samples.
    """
    where = where or str(path)
    wav, info, keep = _decode_window(
        path, where, sample_rate, resample, downmix, expected_samples, crop, start_of
    )
    if info.channels > 1:
        wav = wav.mean(axis=1, keepdims=True)
    wav = wav[:, 0]
    if info.sample_rate != sample_rate:
        resample = _resampler(info.sample_rate, sample_rate)
        wav = resample(torch.from_numpy(np.ascontiguousarray(wav))).numpy()
    return np.ascontiguousarray(wav[keep], dtype=np.float32)


@functools.lru_cache(maxsize=16)
def _resampler(orig: int, new: int) -> torch.nn.Module:
    """torchaudio's resampler from ``orig`` to ``new`` Hz, its kernel computed once per rate
    pair (per process) rather than once per file; float32, as the decoded audio."""
    from torchaudio.transforms import Resample

    return Resample(orig, new, dtype=torch.float32, **RESAMPLER)


def resampled_length(frames: int, rate: int, target: int) -> int:
    """Samples torchaudio's resampler makes of ``frames`` at ``rate`` (ceil of the ratio)."""
    g = math.gcd(rate, target)
    return math.ceil(target // g * frames / (rate // g))


def _window(
    info: AudioInfo, target: int, crop: int | None, start_of: Callable[[int], int] | None
) -> tuple[int, int, slice]:
    """Frames ``[lo, hi)`` of the file to decode, and the slice of what they resample to that
    is the window ``[start, start + crop)`` at ``target``.

    At the file's own rate the window is read as is. At another rate torchaudio's resampler
    works in blocks: with the rates reduced by their gcd to ``orig -> new``, output block ``b``
    (``new`` samples) is made from input ``[b * orig - width, (b + 1) * orig + width)``. So the
    read starts a whole number of blocks early (at least ``width`` input samples, or at 0) and
    ends as many late (or at the end), and every output of the window is made from the same
    inputs as in the full decode.
    """
    length = resampled_length(info.frames, info.sample_rate, target)
    if crop is None or length <= crop:
        return 0, info.frames, slice(None)
    start = start_of(length) if start_of is not None else 0
    if info.sample_rate == target:
        return start, start + crop, slice(None)
    g = math.gcd(info.sample_rate, target)
    orig, new = info.sample_rate // g, target // g
    # the resampler's kernel half-width in input samples (torchaudio's formula), with room
    taps, rolloff = RESAMPLER["lowpass_filter_width"], RESAMPLER["rolloff"]
    width = math.ceil(taps * orig / (min(orig, new) * rolloff)) + 1
    margin = -(-width // orig) + 1  # in blocks
    first = max(start // new - margin, 0)
    last = min((start + crop - 1) // new + 1 + margin, -(-info.frames // orig))
    lo, hi = first * orig, min(last * orig, info.frames)
    begin = start - first * new
    return lo, hi, slice(begin, begin + crop)


def normalize(wav: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance (fairseq ``normalize``, LARGE recipes)."""
    return ((wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)).astype(np.float32)
