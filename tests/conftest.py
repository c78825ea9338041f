"""Shared fixtures: real audio files on disk, and Hydra configs composed as the CLI does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]


def write_tone(
    path: Path,
    seconds: float,
    rate: int = 16_000,
    channels: int = 1,
    seed: int = 0,
    fmt: str | None = None,
) -> np.ndarray:
    """Write a noisy tone; return the float32 samples as written (frames, channels)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    base = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 300) * t) + 0.05 * rng.standard_normal(n)
    data = np.stack([base * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data if channels > 1 else data[:, 0], rate, format=fmt)
    return data


@pytest.fixture
def librispeech_tree(tmp_path: Path) -> Path:
    """A LibriSpeech-layout tree: 3 speakers x 2 chapters x 4 utterances of 0.5-3 s FLAC."""
    root = tmp_path / "LibriSpeech" / "train-clean-100"
    k = 0
    for spk in (19, 26, 27):
        for ch in (198, 495):
            for u in range(4):
                seconds = 0.5 + 2.5 * ((k * 7) % 11) / 10
                write_tone(root / str(spk) / str(ch) / f"{spk}-{ch}-{u:04d}.flac", seconds, seed=k)
                k += 1
            (root / str(spk) / str(ch) / f"{spk}-{ch}.trans.txt").write_text("TEXT\n")
    return root
