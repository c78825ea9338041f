"""Audio decoding with soundfile: float32 mono at the model's sample rate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from w2v2_pretrain.errors import DataError


def read_audio(
    path: str | Path,
    sample_rate: int = 16_000,
    resample: bool = True,
    downmix: bool = True,
    expected_samples: int | None = None,
    where: str | None = None,
) -> np.ndarray:
    """Read one file as float32 mono at ``sample_rate``.

    Args:
        path: audio file soundfile can read (FLAC, WAV, OGG, ...).
        sample_rate: rate the model expects (16 kHz for wav2vec 2.0).
        resample: resample other rates with torchaudio; False refuses them.
        downmix: average channels to mono; False refuses multi-channel files.
        expected_samples: the manifest's length (at the file's own rate); a file with another
            length (truncated, replaced) is an error.
        where: how to name the input in errors (default: the path).

    Returns:
        ``(L,)`` float32 samples.
    """
    where = where or str(path)
    try:
        wav, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except FileNotFoundError:
        raise DataError(f"{where}: file not found") from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{where}: unreadable audio: {reason} (corrupt, truncated or not audio?)"
        ) from None
    frames, channels = wav.shape
    if frames == 0:
        raise DataError(f"{where}: empty audio (0 samples)")
    if expected_samples is not None and frames != expected_samples:
        raise DataError(
            f"{where}: manifest says {expected_samples} samples but the file has {frames} "
            "(truncated or replaced file? rebuild the manifest)"
        )
    if channels > 1:
        if not downmix:
            raise DataError(f"{where}: {channels} channels; set data.downmix=true to average them")
        wav = wav.mean(axis=1, keepdims=True)
    wav = wav[:, 0]
    if rate != sample_rate:
        if not resample:
            raise DataError(
                f"{where}: sample rate {rate} Hz, expected {sample_rate} Hz; "
                "set data.resample=true to resample"
            )
        import torchaudio.functional as AF

        wav = AF.resample(torch.from_numpy(np.ascontiguousarray(wav)), rate, sample_rate).numpy()
    return np.ascontiguousarray(wav, dtype=np.float32)


def normalize(wav: np.ndarray) -> np.ndarray:
    """Zero mean, unit variance per utterance (fairseq ``normalize``, LARGE recipes)."""
    return ((wav - wav.mean()) / np.sqrt(wav.var() + 1e-5)).astype(np.float32)
