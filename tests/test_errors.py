"""Every bad setting, run folder, checkpoint or manifest is one line naming the field or file and
the cause, never a traceback; no file can run code when it is loaded."""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import (
    CLI,
    FAST,
    error_line,
    run_cli,
    write_tone,
)
from runs import last_error


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.masking.mask_prob=1.5"], "error: model.masking.mask_prob: must be in [0, 1)"),
        (
            ["model.masking.mask_length=200"],
            "error: model.masking.mask_length (200 frames) is not shorter than the longest clip",
        ),
        (
            ["data.max_tokens=20000"],
            "error: data.max_tokens (20000) is below data.max_sample_size (40000)",
        ),
        (
            ["model.objective.num_negatives=500"],
            "error: model.objective.num_negatives (500) exceeds the other masked frames",
        ),
        (["data.collate=pad"], "error: data.collate=pad with model.feature_encoder.mode="),
        (["data.collate=trim"], "error: data.collate: expected one of 'crop', 'pad', got 'trim'"),
        (  # refused at composition (the node is typed), reported as every bad setting is
            ["model.feature_encoder.mode=batch_norm"],
            "error: model.feature_encoder.mode: expected one of 'group_norm', 'layer_norm', got "
            "'batch_norm'",
        ),
        (["ckpt_path=/nowhere.ckpt", "resume=true"], "error: ckpt_path and resume=true both"),
        (["data.audio_per_update=-3h"], "error: data.audio_per_update: must be positive"),
        (
            ["trainer.accumulate_grad_batches=0"],
            "error: trainer.accumulate_grad_batches: must be a positive integer",
        ),
        (
            ["trainer.accumulate_grad_batches=-40"],
            "error: trainer.accumulate_grad_batches: must be a positive integer",
        ),
        (["max_bad_updates=0"], "error: max_bad_updates: must be at least 1, got 0"),
        (["seed=-1"], "error: seed: must be in [0, 2**32), got -1"),
    ],
)
def test_bad_settings_are_one_line_errors(tmp_path, overrides, message):
    assert message in error_line([*FAST, *overrides], tmp_path)


@pytest.mark.parametrize(
    "overrides, message",
    [  # through the real CLI: one refused at composition, one at build, one at resume
        (["data.collate=trim"], "error: data.collate: expected one of 'crop', 'pad', got 'trim'"),
        (
            ["model.objective.num_negatives=500"],
            "error: model.objective.num_negatives (500) exceeds the other masked frames",
        ),
        pytest.param(  # the same path out as the build error above
            ["ckpt_path=/nowhere.ckpt", "resume=true"],
            "error: ckpt_path and resume=true both",
            marks=pytest.mark.slow,
        ),
    ],
)
def test_bad_settings_through_the_cli_are_one_line_and_exit_2(tmp_path, overrides, message):
    proc = run_cli(*FAST, *overrides, f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert message in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]


@contextlib.contextmanager
def unwritable(folder: Path):
    """``folder`` made unwritable, for root too where the file system allows (chattr +i)."""
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
    elif subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode:
        pytest.skip("running as root without chattr +i: no folder is unwritable")
    try:
        yield folder
    finally:
        subprocess.run(["chattr", "-i", str(folder)], capture_output=True)
        folder.chmod(0o700)


def test_a_run_folder_that_cannot_be_written_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    """hydra.run.dir that is a file, lies under a file, or is in a folder nobody may write: the
    last through the real CLI, the others through its main() in this process (Hydra makes the
    run folder before the run starts, so no run is built either way)."""
    from w2v2_pretrain.cli.pretrain import main

    (tmp_path / "file").write_text("")
    prefix = "error: hydra.run.dir: cannot write the run folder: "
    handlers, level = logging.root.handlers[:], logging.root.level
    try:
        for run_dir, cause in (
            (tmp_path / "file", "File exists"),
            (tmp_path / "file" / "run", "Not a directory"),
        ):
            argv = ["w2v2-pretrain", *FAST, f"hydra.run.dir={run_dir}"]
            monkeypatch.setattr(sys, "argv", argv)
            with pytest.raises(SystemExit) as stopped:
                main()
            line = capsys.readouterr().err.strip().splitlines()[-1]
            assert stopped.value.code == 2 and line.startswith(prefix), line
            assert cause in line and str(run_dir) in line, line
    finally:  # Hydra configured logging onto this test's captured output: as it was
        logging.root.handlers[:], logging.root.level = handlers, level
    with unwritable(tmp_path / "locked") as locked:
        run_dir = locked / "run"
        proc = run_cli(*FAST, "trainer.max_steps=1", f"hydra.run.dir={run_dir}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = last_error(proc)
        # Permission denied / Operation not permitted
        assert line.startswith(prefix) and "ermi" in line and str(run_dir) in line, line


class Payload:
    """Unpickled blindly, this runs a shell command (it creates a marker file)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_are_one_line_errors(tmp_path, trained):
    """Missing, truncated, foreign and code-carrying files, and a checkpoint of another model,
    given to ckpt_path or found by resume=true: a one-line error each; no code runs."""
    manifests, good = trained
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    foreign = tmp_path / "foreign.ckpt"
    torch.save({"weights": torch.zeros(3)}, foreign)
    marker = tmp_path / "code-ran"
    evil = tmp_path / "evil.ckpt"
    torch.save({"state_dict": {}, "extra": Payload(marker)}, evil)
    base = [*FAST, f"data.manifest_dir={manifests}", "trainer.max_steps=4"]
    cases = {
        tmp_path / "missing.ckpt": "does not exist",
        truncated: "not a readable checkpoint (truncated or corrupt?)",
        foreign: "not a w2v2-pretrain training checkpoint",
        evil: "refused: not plain tensors and data (it holds posix.system)",
    }
    # the code-carrying file through the real CLI: no process of the run executes it
    proc = run_cli(*base, f"ckpt_path={evil}", f"hydra.run.dir={tmp_path / 'run'}")
    assert proc.returncode == 2 and cases[evil] in last_error(proc), proc.stderr[-2000:]
    assert str(evil) in last_error(proc)
    for path, message in cases.items():  # the rest found in-process, as the CLI finds them
        line = error_line([*base, f"ckpt_path={path}"], tmp_path / "run")
        assert message in line and str(path) in line, (path, line)
    assert not marker.exists()
    line = error_line(
        [*base, f"ckpt_path={good}", "model.context_network.num_layers=2"], tmp_path / "run"
    )
    assert "trained with other model settings (model.context_network.num_layers: 4 -> 2)" in line

    # resume=true finds a truncated last.ckpt in the run folder
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(truncated.read_bytes())
    assert "last.ckpt: not a readable checkpoint" in error_line([*base, "resume=true"], run)


def test_export_and_extract_refuse_code_carrying_files(tmp_path):
    """w2v2-export and w2v2-extract load with weights_only=True: a file that would run code
    when unpickled is refused with one line, and the code does not run."""
    marker = tmp_path / "code-ran"
    evil = tmp_path / "model.pt"
    torch.save({"format": "w2v2-pretrain/model-state/1", "config": Payload(marker)}, evil)
    write_tone(tmp_path / "a.flac", 1.0)
    for args in (
        ["w2v2_pretrain.cli.export", str(evil), str(tmp_path / "hf")],
        ["w2v2_pretrain.cli.extract", str(evil), str(tmp_path / "a.flac"), str(tmp_path / "f")],
    ):
        proc = subprocess.run([CLI[0], "-m", *args], capture_output=True, text=True)
        assert proc.returncode == 2, proc.stderr[-2000:]
        assert proc.stderr.strip() == (
            f"error: {evil}: refused: not plain tensors and data (it holds posix.system); "
            "weights-only loading never runs code from a file"
        )
    assert not marker.exists()


@pytest.mark.parametrize(
    "body, message",
    [
        ("{root}\na.flac\n", "train.tsv:2: expected 2 tab-separated columns"),
        ("{root}\na.flac\tlots\n", "train.tsv:2: num_samples 'lots' is not an integer"),
        ("{root}\na.flac\t-3\n", "train.tsv:2: num_samples must be positive, got -3"),
        (
            "{root}\na.flac\t99999999999999999999\n",
            "train.tsv:2: num_samples 99999999999999999999 is more than a length can be",
        ),
        ("{root}\na.flac\t24000\n", "train.tsv:2 ({root}/a.flac): manifest says 24000 samples"),
        ("{root}\na.flac\t{n}\na.flac\t{n}\n", "train.tsv:3: 'a.flac' is listed again"),
        ("{root}/gone\na.flac\t{n}\n", "train.tsv:1: root {root}/gone does not exist"),
        ("{root}\n../a.flac\t{n}\n", "train.tsv:2 ({root}/../a.flac): file not found"),
        ("{root}\n", "train.tsv: no entries to train on"),
        ("{root}\na.flac\t{n}\n", "train.tsv: no usable entries"),  # filtered by min size
    ],
)
def test_bad_manifests_are_one_line_errors(tmp_path, body, message):
    root = tmp_path / "audio"
    n = len(write_tone(root / "a.flac", 1.0))
    manifests = tmp_path / "m"
    manifests.mkdir()
    text = body.format(root=root, n=n)
    (manifests / "train.tsv").write_text(text)
    (manifests / "valid.tsv").write_text(f"{root}\na.flac\t{n}\n")
    extra = ["data.min_sample_size=32000", "data.max_sample_size=40000"]
    if "no usable" not in message:
        extra = ["data.min_sample_size=8000", "model.objective.num_negatives=10"]
    overrides = [
        *FAST,
        f"data.manifest_dir={manifests}",
        "data.verify=header",
        "data.on_bad_file=error",
        *extra,
    ]
    if "is listed again" in message:  # one case through the real CLI: exit 2, the last line
        proc = run_cli(*overrides, f"hydra.run.dir={tmp_path / 'run'}")
        assert proc.returncode == 2, proc.stderr[-2000:]
        line = last_error(proc)
    else:
        line = error_line(overrides, tmp_path / "run")
    assert line.startswith("error: ") and message.format(root=root) in line, line
