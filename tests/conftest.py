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


# good files in every format the loader must take, and each kind of bad file
MESSY_GOOD = ("good.flac", "rate8k.wav", "stereo44k.flac", "pcm_u8.wav", "float32.wav")
MESSY_BAD_AT_HEADER = {  # found by the header pass (data.verify=header, the default)
    "missing.flac": "file not found",
    "corrupt.flac": "unreadable audio",
    "text.flac": "unreadable audio",
    "empty.wav": "empty audio (0 samples)",
    "tiny.flac": "shorter than the feature encoder's receptive field",
}
MESSY_BAD_AT_DECODE = {  # intact headers: found by data.verify=decode, or met in training
    "truncated.flac": "flac decoder lost sync",
    "nan.wav": "contains NaN or Inf samples",
    "inf.wav": "contains NaN or Inf samples",
    "silent.flac": "all-zero audio (digital silence)",
}


def messy_corpus(tmp_path: Path, copies: int = 2) -> Path:
    """A manifest folder whose train.tsv lists ``copies`` of each good file (1.2-1.5 s) and
    one of each bad file; valid.tsv lists good files only."""
    root = tmp_path / "messy"
    rows: list[tuple[str, int]] = []
    for c in range(copies):
        d = f"c{c}/"
        a = write_tone(root / f"{d}good.flac", 1.2, seed=10 + c)
        b = write_tone(root / f"{d}rate8k.wav", 1.5, rate=8000, seed=20 + c)
        s = write_tone(root / f"{d}stereo44k.flac", 1.3, rate=44_100, channels=2, seed=30 + c)
        u = write_tone(root / f"{d}pcm_u8.wav", 1.2, seed=40 + c)
        sf.write(root / f"{d}pcm_u8.wav", u, 16_000, subtype="PCM_U8")
        f = write_tone(root / f"{d}float32.wav", 1.2, seed=50 + c)
        sf.write(root / f"{d}float32.wav", f, 16_000, subtype="FLOAT")
        rows += [(d + n, len(x)) for n, x in zip(MESSY_GOOD, (a, b, s, u, f), strict=True)]
    write_tone(root / "truncated.flac", 2.0, seed=60)
    raw = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(raw[: len(raw) // 3])
    (root / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "text.flac").write_text("hello, I am not audio\n")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    write_tone(root / "tiny.flac", 100 / 16_000)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        wav = np.full(20_000, 0.1, dtype=np.float32)
        wav[5000] = value
        sf.write(root / name, wav, 16_000, subtype="FLOAT")
    sf.write(root / "silent.flac", np.zeros(20_000, dtype=np.float32), 16_000)
    sizes = {"truncated.flac": 32_000, "missing.flac": 20_000, "corrupt.flac": 20_000}
    sizes |= {"text.flac": 20_000, "empty.wav": 20_000, "tiny.flac": 100}
    sizes |= {"nan.wav": 20_000, "inf.wav": 20_000, "silent.flac": 20_000}
    rows += list(sizes.items())
    out = tmp_path / "messy_manifests"
    out.mkdir()
    (out / "train.tsv").write_text(f"{root}\n" + "".join(f"{p}\t{n}\n" for p, n in rows))
    good = rows[: len(MESSY_GOOD)]
    (out / "valid.tsv").write_text(f"{root}\n" + "".join(f"{p}\t{n}\n" for p, n in good))
    return out
