"""A long run survives bad files: real broken files met at set-up and in training, by one process
and by one rank of two."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    MESSY_BAD_AT_DECODE,
    MESSY_BAD_AT_HEADER,
    compose_cfg,
    error_line,
    messy_corpus,
    run_cli,
    scalars,
    write_tone,
)
from runs import last_error

from w2v2_pretrain.train import train

MESSY = [
    "experiment=demo",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.min_sample_size=16000",
    "data.max_sample_size=16000",
    "data.max_tokens=48000",
    "model.objective.num_negatives=10",
    "trainer.limit_val_batches=1",
    "probe.every_n_updates=0",
    "trainer.val_check_interval=1000",
]


def bad_lines(run: Path) -> list[str]:
    path = run / "bad_files.tsv"
    return path.read_text().splitlines() if path.is_file() else []


def test_bad_audio_found_at_setup_is_skipped_counted_and_listed(tmp_path, caplog):
    """data.verify=decode: every bad file is named with its cause at setup, listed in
    bad_files.tsv and counted; every odd but valid format (8 kHz, 44.1 kHz stereo, 8-bit,
    32-bit float) is trained on."""
    run = tmp_path / "run"
    overrides = [*MESSY, f"data.manifest_dir={messy_corpus(tmp_path)}", "data.verify=decode"]
    with caplog.at_level(logging.INFO, logger="w2v2_pretrain"):
        result = train(compose_cfg([*overrides, "trainer.max_steps=2"], run))
    assert result.global_step == 2
    lines = bad_lines(run)
    assert len(lines) == len(MESSY_BAD_AT_HEADER) + len(MESSY_BAD_AT_DECODE)
    for name, cause in (MESSY_BAD_AT_HEADER | MESSY_BAD_AT_DECODE).items():
        (line,) = [x for x in lines if f"/{name}): " in x]
        assert line.startswith("setup\t") and "train.tsv:" in line and cause in line, line
    assert any("kept 10 of 19 entries" in m for m in caplog.messages)


def test_bad_audio_met_in_training_is_skipped_and_the_run_goes_on(tmp_path):
    """The default header check cannot see a truncated FLAC (its header is intact), NaN/Inf
    or silent audio: met in training, each is left out of its batch, named in bad_files.tsv with
    its update, counted in TensorBoard, and the epoch completes."""
    run = tmp_path / "run"
    overrides = [
        *MESSY,
        f"data.manifest_dir={messy_corpus(tmp_path)}",
        "trainer.max_steps=5",  # one epoch: 14 usable files, 3 per batch
        "trainer.log_every_n_steps=1",
    ]
    result = train(compose_cfg(overrides, run))
    lines = bad_lines(run)
    setup = [x for x in lines if x.startswith("setup\t")]
    met = [x for x in lines if x.startswith("update ")]
    assert len(setup) == len(MESSY_BAD_AT_HEADER)
    assert len(met) == len(MESSY_BAD_AT_DECODE)
    for name in MESSY_BAD_AT_DECODE:
        assert sum(f"/{name}): " in x for x in met) == 1, name
    counted = scalars(run)["train/bad_files"]
    assert counted[-1][1] == len(MESSY_BAD_AT_DECODE)
    assert result.global_step == 5 and result.stopped_by is None  # 14 usable / 3 per batch


def test_bad_file_with_error_policy_stops_with_one_line(tmp_path):
    """data.on_bad_file=error: found at set-up (in this process, as the CLI finds it), or met in
    training (through the real CLI)."""
    manifests = messy_corpus(tmp_path)
    overrides = [*MESSY, f"data.manifest_dir={manifests}", "data.on_bad_file=error"]
    line = error_line(overrides, tmp_path / "a")
    assert line.startswith(f"error: {manifests / 'train.tsv'}:13 (") and "missing.flac" in line
    assert line.endswith("file not found (data.on_bad_file=skip skips bad files)")

    # met in training: all ranks stop at the update that met it, with a checkpoint if any
    # update was made
    good = [x for x in (manifests / "train.tsv").read_text().splitlines()[1:11]]
    root = (manifests / "train.tsv").read_text().splitlines()[0]
    (manifests / "train.tsv").write_text("\n".join([root, *good, "truncated.flac\t32000"]) + "\n")
    run = tmp_path / "b"
    proc = run_cli(
        *MESSY,
        f"data.manifest_dir={manifests}",
        "data.on_bad_file=error",
        "trainer.max_steps=10",
        "callbacks.periodic.every_n_train_steps=1",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 2
    line = last_error(proc)
    assert "1 file(s) could not be decoded in update" in line
    assert "train.tsv:12 (" in line and "truncated.flac): unreadable audio" in line
    update = int(line.split("in update ")[1].split(":")[0])
    if update > 0:
        assert f"[checkpoint: {run / 'checkpoints' / 'last.ckpt'}" in line
        assert (
            torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
            == update
        )
    assert any("truncated.flac" in x for x in bad_lines(run))


@pytest.mark.parametrize("policy", ["skip", "error"])
def test_ddp_rank_meeting_a_bad_file_neither_hangs_nor_diverges(tmp_path, policy):
    """Two CPU processes; one meets a truncated FLAC in its batch. With skip, both ranks go on
    (the rank with less audio still joins every collective) and finish the epoch; with error,
    both stop at the same update. Either way within a bounded time."""
    root = tmp_path / "audio"
    rows = []
    for i in range(7):
        wav = write_tone(root / f"g{i}.flac", 1.0, seed=i)
        rows.append(f"g{i}.flac\t{len(wav)}")
    write_tone(root / "truncated.flac", 1.0, seed=9)
    raw = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(raw[: len(raw) // 3])
    rows.append("truncated.flac\t16000")
    manifests = tmp_path / "m"
    manifests.mkdir()
    (manifests / "train.tsv").write_text(f"{root}\n" + "\n".join(rows) + "\n")
    (manifests / "valid.tsv").write_text(f"{root}\n" + "\n".join(rows[:2]) + "\n")
    run = tmp_path / "run"
    start = time.monotonic()
    proc = run_cli(
        *MESSY,
        "trainer=ddp_cpu",
        f"data.manifest_dir={manifests}",
        "data.max_tokens=32000",
        f"data.on_bad_file={policy}",
        "trainer.max_steps=2",  # one epoch: 4 batches of 2, 2 per rank
        f"hydra.run.dir={run}",
        timeout=240,
    )
    assert time.monotonic() - start < 240
    assert any("truncated.flac" in x for x in bad_lines(run))
    if policy == "skip":
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "pretraining finished after 2 updates" in proc.stdout  # 4 batches / 2 ranks
        weights = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]
        assert all(torch.isfinite(w).all() for w in weights.values())
    else:
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert "could not be decoded in update" in last_error(proc)
