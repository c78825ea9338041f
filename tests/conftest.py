"""Shared fixtures (the helpers they build on are in helpers.py and runs.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from helpers import FAST, run_cli, scalars, small_manifests, write_tone
from runs import RESUMABLE


def pytest_collection_modifyitems(items):
    """Tests marked ``cuda`` skip where torch sees no CUDA device (``pytest -m cuda`` selects
    them: the GPU check runs that)."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("cuda"):
            item.add_marker(skip)


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


@pytest.fixture(scope="session")
def reference(tmp_path_factory):
    """An uninterrupted 14-update run (the curve every interrupted run must reproduce)."""
    tmp = tmp_path_factory.mktemp("reference")
    manifests = small_manifests(tmp, 12)  # 4 batches of 3 per epoch
    proc = run_cli(
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        f"hydra.run.dir={tmp / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return manifests, scalars(tmp / "run")


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A real training checkpoint of the demo model (2 updates)."""
    tmp = tmp_path_factory.mktemp("trained")
    manifests = small_manifests(tmp, 6)
    proc = run_cli(
        *FAST,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=2",
        "trainer.limit_val_batches=0",
        f"hydra.run.dir={tmp / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return manifests, tmp / "run" / "checkpoints" / "last.ckpt"
