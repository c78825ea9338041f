"""Shared fixtures (the helpers they build on are in helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import write_tone


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
