"""A long run survives bad files, crashes, kills and preemption: each case really happens here
(real broken files, real kill -9 and SIGTERM of a real w2v2-pretrain, real DDP processes)."""

from __future__ import annotations

import contextlib
import errno
import math
import os
import random
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import (
    CLI,
    FAST,
    MESSY_BAD_AT_DECODE,
    MESSY_BAD_AT_HEADER,
    compose_cfg,
    error_line,
    messy_corpus,
    run_cli,
    scalars,
    small_manifests,
    write_tone,
)
from typing_extensions import override

from w2v2_pretrain import atomic
from w2v2_pretrain.errors import CheckpointWriteError, TrainingError
from w2v2_pretrain.paths import REPO_ROOT
from w2v2_pretrain.train import build, train

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


def last_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1] if lines else ""


# -- bad audio ------------------------------------------------------------------------------


def test_bad_audio_found_at_setup_is_skipped_counted_and_listed(tmp_path):
    """data.verify=decode: every bad file is named with its cause at setup, listed in
    bad_files.tsv and counted; every odd but valid format (8 kHz, 44.1 kHz stereo, 8-bit,
    32-bit float) is trained on."""
    run = tmp_path / "run"
    proc = run_cli(
        *MESSY,
        f"data.manifest_dir={messy_corpus(tmp_path)}",
        "data.verify=decode",
        "trainer.max_steps=2",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = bad_lines(run)
    assert len(lines) == len(MESSY_BAD_AT_HEADER) + len(MESSY_BAD_AT_DECODE)
    for name, cause in (MESSY_BAD_AT_HEADER | MESSY_BAD_AT_DECODE).items():
        (line,) = [x for x in lines if f"/{name}): " in x]
        assert line.startswith("setup\t") and "train.tsv:" in line and cause in line, line
    assert "kept 10 of 19 entries" in proc.stdout + proc.stderr


def test_bad_audio_met_in_training_is_skipped_and_the_run_goes_on(tmp_path):
    """The default header check cannot see a truncated FLAC (its header is intact), NaN/Inf
    or silent audio: met in training, each is left out of its batch, named in bad_files.tsv with
    its update, counted in TensorBoard, and the epoch completes."""
    run = tmp_path / "run"
    proc = run_cli(
        *MESSY,
        f"data.manifest_dir={messy_corpus(tmp_path)}",
        "trainer.max_steps=5",  # one epoch: 14 usable files, 3 per batch
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = bad_lines(run)
    setup = [x for x in lines if x.startswith("setup\t")]
    met = [x for x in lines if x.startswith("update ")]
    assert len(setup) == len(MESSY_BAD_AT_HEADER)
    assert len(met) == len(MESSY_BAD_AT_DECODE)
    for name in MESSY_BAD_AT_DECODE:
        assert sum(f"/{name}): " in x for x in met) == 1, name
    counted = scalars(run)["train/bad_files"]
    assert counted[-1][1] == len(MESSY_BAD_AT_DECODE)
    assert "pretraining finished after 5 updates" in proc.stdout  # 14 usable / 3 per batch


def test_bad_file_with_error_policy_stops_with_one_line(tmp_path):
    manifests = messy_corpus(tmp_path)
    proc = run_cli(
        *MESSY,
        f"data.manifest_dir={manifests}",
        "data.on_bad_file=error",
        f"hydra.run.dir={tmp_path / 'a'}",
    )
    assert proc.returncode == 2
    line = last_error(proc)
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


# -- DDP -----------------------------------------------------------------------------------


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


# -- interruptions --------------------------------------------------------------------------

RESUMABLE = [
    *FAST,
    "data.max_tokens=120000",
    "optim.scheduler.total_steps=14",
    "optim.scheduler.warmup=3",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0",
]


@pytest.fixture(scope="module")
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


def start(*overrides: str, session: bool = False) -> subprocess.Popen:
    """The CLI in the background; ``session``: in a process group of its own, as a scheduler
    starts a job (signal it with ``os.killpg(proc.pid, ...)``)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # callbacks of this module can be given to the CLI (+callbacks.NAME._target_=...)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).parent), env.get("PYTHONPATH", "")])
    return subprocess.Popen(
        [*CLI, *overrides],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=session,
    )


def wait_for(condition, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, f"the run ended early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.002)


def same_curve(run: Path, reference: dict) -> None:
    """Every logged training value equals the uninterrupted run's at the same update (values
    logged twice, before an interruption and again after the resume, must both match)."""
    got = scalars(run)
    for tag in ("train/loss", "train/lr", "train/temperature", "train/accuracy"):
        want = dict(reference[tag])
        assert sorted({s for s, _ in got[tag]}) == sorted(want) == list(range(14)), tag
        for step, value in got[tag]:
            assert value == pytest.approx(want[step], rel=1e-5, abs=1e-7), (tag, step)


def test_kill_9_then_resume_continues_exactly(tmp_path, reference):
    """kill -9 at a random point, then resume=true: the run continues from the last checkpoint
    and the global step, LR, temperature and data order continue; what was written before the
    checkpoint (events, checkpoints) is kept."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=2",
        f"hydra.run.dir={run}",
    ]
    proc = start(*common)
    wait_for(lambda: (run / "checkpoints" / "step0000004.ckpt").is_file(), proc)
    time.sleep(random.uniform(0.0, 1.5))
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= killed_at < 14
    events_before = {p.name for p in (run / "tensorboard").glob("events.*")}
    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretraining finished after 14 updates" in proc.stdout
    assert events_before <= {p.name for p in (run / "tensorboard").glob("events.*")}
    assert (run / "checkpoints" / "step0000004.ckpt").is_file()
    same_curve(run, ref)


def test_sigterm_saves_at_the_current_update_and_requeue_continues(tmp_path, reference):
    """SIGTERM (what schedulers send before preemption): the run writes a checkpoint at the
    update it reached and exits with 143 and a line saying how to continue; the same command
    with resume=true continues exactly."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=3",
        f"hydra.run.dir={run}",
    ]
    proc = start(*common)
    wait_for(lambda: (run / "checkpoints" / "step0000003.ckpt").is_file(), proc)
    time.sleep(random.uniform(0.0, 1.0))
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "Traceback" not in err
    stopped = int(out.split("stopped by SIGTERM after ")[1].split(" ")[0])
    assert "continue with resume=true" in out
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == stopped >= 3
    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, ref)


def group_send(proc: subprocess.Popen, sig: int) -> None:
    os.killpg(proc.pid, sig)  # every process of the job: the loader's workers too


def main_send(proc: subprocess.Popen, sig: int) -> None:
    proc.send_signal(sig)


def main_send_until_exit(proc: subprocess.Popen, sig: int) -> None:
    """``sig`` to the main process every 0.2 s until it exits (a scheduler's kill loop): no
    moment of the stop, its last steps included, may be killed by one."""
    deadline = time.monotonic() + 60
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        time.sleep(0.2)


@pytest.mark.parametrize(
    "signals, status",
    [
        # SLURM / systemd (the whole group), then SIGTERM again from 0.3 s later until the
        # process has exited
        ([(group_send, signal.SIGTERM), (main_send_until_exit, signal.SIGTERM)], 143),
        ([(group_send, signal.SIGINT)], 130),  # Ctrl-C in the terminal
        # each part of the first case on its own (it covers both)
        pytest.param([(group_send, signal.SIGTERM)], 143, marks=pytest.mark.slow),
        pytest.param(
            [(main_send, signal.SIGTERM), (main_send, signal.SIGTERM)], 143, marks=pytest.mark.slow
        ),
    ],
    ids=["sigterm-to-group-then-again", "ctrl-c-to-group", "sigterm-to-group", "two-sigterms"],
)
def test_signals_as_clusters_send_them_stop_at_an_update_and_resume_exactly(
    tmp_path, reference, signals, status
):
    """With loader workers (2) and the job in its own process group: SIGTERM to the whole
    group, SIGTERM twice 0.3 s apart, Ctrl-C to the group. Each stops after the current update
    with last.ckpt at it, the summary and the resume=true hint, exit 128 + signal; the resumed
    curve and its TensorBoard steps equal the uninterrupted run's."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=3",
        f"hydra.run.dir={run}",
    ]
    workers = ["data.num_workers=2", "data.persistent_workers=true"]
    proc = start(*common, *workers, session=True)
    wait_for(lambda: (run / "checkpoints" / "step0000003.ckpt").is_file(), proc)
    time.sleep(random.uniform(0.0, 1.0))
    for i, (send, sig) in enumerate(signals):
        time.sleep(0.3 if i else 0.0)
        send(proc, sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    stopped = int(re.search(r"pretraining stopped by .* after (\d+) updates", out)[1])
    assert "continue with resume=true" in out
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == (stopped)
        >= 3
    )
    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, ref)
    first, second = sorted((run / "configs").glob("start-*.yaml"))  # every start's config
    assert "resume: false" in first.read_text() and "resume: true" in second.read_text()


class SigtermAt(pl.Callback):
    """Sends its own process SIGTERM at the end of update ``step``, as a scheduler might."""

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_after_an_epochs_last_batch_resumes_exactly(tmp_path, reference):
    """SIGTERM at the end of an epoch's last batch (update 4 of 4 batches per epoch), before the
    epoch ends: Lightning's checkpoint then still counts the finished epoch's batches when it
    resumes in the next epoch; the requeued run must neither skip nor repeat a batch."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=3",
    ]
    stop = ["+callbacks.sigterm._target_=test_reliability.SigtermAt", "+callbacks.sigterm.step=4"]
    result = train(compose_cfg([*common, *stop], run))
    assert result.stopped_by == "SIGTERM" and result.global_step == 4
    proc = run_cli(*common, f"hydra.run.dir={run}", "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, ref)


class HoldValidation(pl.Callback):
    """After the first batch of the first validation in training, writes ``marker`` and waits
    (a minute at most) for a stop signal: the test's SIGTERM then lands inside the validation,
    with batches left to go."""

    def __init__(self, marker: str) -> None:
        self.marker = Path(marker)

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object):
        if trainer.sanity_checking or self.marker.exists():
            return
        self.marker.touch()
        deadline = time.monotonic() + 60
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.01)


def test_a_validation_interrupted_by_sigterm_is_redone_after_the_resume(tmp_path, trained):
    """SIGTERM while the validation at update 2 runs (its first of 3 batches done): the run
    stops with last.ckpt at update 2 and exit 143; after resume=true that validation is run
    again, whole, before update 3: val/loss at its step in TensorBoard, and best.ckpt is the
    checkpoint of that validation."""
    manifests, _ = trained
    run = tmp_path / "run"
    common = [
        *FAST,
        f"data.manifest_dir={manifests}",  # 6 clips: 3 batches of 2, for training and validation
        "data.max_tokens=80000",
        "trainer.max_steps=3",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
        f"hydra.run.dir={run}",
    ]
    marker = tmp_path / "in-validation"
    hold = ["+callbacks.hold._target_=test_reliability.HoldValidation"]
    proc = start(*common, *hold, f"+callbacks.hold.marker={marker}")
    wait_for(marker.exists, proc)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-3000:]
    assert "pretraining stopped by SIGTERM after 2 updates" in out
    assert not (run / "checkpoints" / "best.ckpt").exists()  # the validation did not finish
    assert "val/loss" not in scalars(run)

    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = scalars(run)
    # step 1: the validation after update 2 (the step of that update's training values, as in
    # an uninterrupted run); step 3: the final validation
    val = dict(got["val/loss"])
    assert sorted(val) == [1, 3] and [s for s, _ in got["train/loss"]] == [0, 1, 2]
    best = torch.load(run / "checkpoints" / "best.ckpt", weights_only=True)
    assert best["global_step"] == 2
    (state,) = [v for k, v in best["callbacks"].items() if "'monitor': 'val/loss'" in k]
    assert float(state["best_model_score"]) == pytest.approx(val[1], rel=1e-6)


def test_kill_during_a_checkpoint_save_never_corrupts_last_ckpt(tmp_path, reference):
    """kill -9 while a checkpoint is being written (its temporary file exists): last.ckpt is
    still a whole, loadable checkpoint, and the run resumes from it."""
    manifests, _ = reference
    run = tmp_path / "run"
    ckpts = run / "checkpoints"
    common = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=1",
        f"hydra.run.dir={run}",
    ]
    proc = start(*common)
    wait_for(lambda: (ckpts / "last.ckpt").is_file(), proc)
    wait_for(lambda: any(ckpts.glob(".last.ckpt.*.tmp")), proc)  # mid-save of last.ckpt
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert any(ckpts.glob(".last.ckpt.*.tmp"))  # the kill did land inside the save
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 1 and "optimizer_states" in ckpt
    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not any(ckpts.glob(".*.tmp"))  # the stale temporary file is gone
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 14


class RecordUpdates(pl.Callback):
    """Records each finished update's loss and bad-update streak (test-side host reads)."""

    losses: list[float] = []
    streaks: list[int] = []

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, *args: object) -> None:
        RecordUpdates.losses.append(float(outputs["loss"]))
        RecordUpdates.streaks.append(int(pl_module.bad_streak))


def test_nonfinite_stop_is_exact_and_names_the_checkpoint_to_go_back_to(tmp_path, reference):
    """A learning rate rising by 1 per update ruins the weights; max_bad_updates=3 non-finite
    updates in a row stop the run at exactly the third (no logging step in between: the streak
    is not read only when metrics are), and the advice names the newest checkpoint saved
    before the first skipped update, whose weights gave a finite loss, and says a resume keeps
    the lr."""
    manifests, _ = reference
    RecordUpdates.losses, RecordUpdates.streaks = [], []
    cfg = compose_cfg(
        [
            *RESUMABLE,
            f"data.manifest_dir={manifests}",
            "trainer.max_steps=14",
            "trainer.log_every_n_steps=50",
            "optim.optimizer.lr=1e3",
            "optim.scheduler.warmup=1000",  # 1, 2, 3, ...: ruined after a few updates
            "optim.scheduler.total_steps=1000",
            "max_bad_updates=3",
            "callbacks.periodic.every_n_train_steps=1",
            "+callbacks.record._target_=test_reliability.RecordUpdates",
        ],
        tmp_path,
    )
    with pytest.raises(TrainingError) as caught:
        train(cfg)
    message = str(caught.value)
    first, last = map(int, re.search(r"updates (\d+) to (\d+)", message).groups())
    streaks, losses = RecordUpdates.streaks, RecordUpdates.losses
    assert last - first + 1 == 3 and len(streaks) == last  # update `last` raised, unfinished
    assert streaks[first:last] == [1, 2] and streaks[first - 1] == 0
    good = Path(re.search(r"go back to (\S+) \(update (\d+)", message)[1])
    step = torch.load(good, weights_only=True)["global_step"]
    assert step == first - 1 and math.isfinite(losses[step])  # the loss its weights gave
    assert "a resume keeps the learning rate" in message and f"init_from={good}" in message
    assert "\n" not in message


class FillingDisk:
    """A file system with ``free`` bytes left: ``w2v2_pretrain.atomic``'s files write through to
    disk until the bytes are used up, then ``write`` raises OSError(ENOSPC) as a full file
    system does (part of the file already written)."""

    def __init__(self, free: int) -> None:
        self.free = free
        self.opened: list[str] = []  # every file the writer opened
        self.full_at: int | None = None  # how many files had been opened when it filled

    def open(self, path, mode="wb"):
        disk, f = self, open(path, mode)  # noqa: SIM115 - closed by the writer's `with`
        self.opened.append(Path(path).name)
        real_write = f.write

        def write(data) -> int:
            size = len(memoryview(data).cast("B"))
            if size > disk.free:
                disk.full_at = disk.full_at or len(disk.opened)
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            disk.free -= size
            return real_write(data)

        f.write = write
        return f


def test_a_disk_that_fills_during_a_save_stops_with_one_line_and_last_ckpt_intact(
    tmp_path, reference, monkeypatch
):
    """The disk fills while a periodic checkpoint is written: one line naming the file and the
    checkpoint that is intact (last.ckpt, whole, at the previous save), no temporary file left,
    and no further write tried (no save-on-exception onto the full disk)."""
    manifests, _ = reference
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "last.ckpt"
    cfg = compose_cfg(
        [
            *RESUMABLE,
            f"data.manifest_dir={manifests}",
            "trainer.max_steps=14",
            "callbacks.periodic.every_n_train_steps=2",
        ],
        run,
    )
    disk = FillingDisk(free=10**12)
    monkeypatch.setattr(atomic, "open", disk.open, raising=False)
    datamodule, module, trainer = build(cfg)
    original = trainer.save_checkpoint

    def save(*args, **kwargs):  # once update 2 is saved, room for half a checkpoint
        if ckpt.is_file() and disk.free > 10**11:
            disk.free = ckpt.stat().st_size // 2
        return original(*args, **kwargs)

    trainer.save_checkpoint = save
    with pytest.raises(CheckpointWriteError) as caught:
        trainer.fit(module, datamodule=datamodule)
    message = str(caught.value)
    assert "\n" not in message and caught.value.__suppress_context__
    assert message.startswith(f"{run / 'checkpoints' / 'step0000004.ckpt'}: not written: ")
    assert "No space left on device" in message
    assert f"{ckpt} (update 2) is intact" in message and "resume=true" in message
    assert disk.opened[disk.full_at :] == []  # nothing written after the disk filled
    assert torch.load(ckpt, weights_only=True)["global_step"] == 2
    assert not any((run / "checkpoints").glob(".*.tmp"))


# -- bad settings ---------------------------------------------------------------------------


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
        (["ckpt_path=/nowhere.ckpt", "resume=true"], "error: ckpt_path and resume=true both"),
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


def test_a_run_folder_that_cannot_be_written_is_a_one_line_error(tmp_path):
    """hydra.run.dir that is a file, lies under a file, or is in a folder nobody may write."""
    (tmp_path / "file").write_text("")
    with unwritable(tmp_path / "locked") as locked:
        for run_dir, cause in (
            (tmp_path / "file", "File exists"),
            (tmp_path / "file" / "run", "Not a directory"),
            (locked / "run", "ermi"),  # Permission denied / Operation not permitted
        ):
            proc = run_cli(*FAST, "trainer.max_steps=1", f"hydra.run.dir={run_dir}")
            assert proc.returncode == 2, proc.stderr[-2000:]
            line = last_error(proc)
            assert line.startswith("error: hydra.run.dir: cannot write the run folder: ")
            assert cause in line and str(run_dir) in line, line


# -- bad checkpoints ------------------------------------------------------------------------


@pytest.fixture(scope="module")
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
    for path, message in cases.items():
        proc = run_cli(*base, f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'run'}")
        assert proc.returncode == 2 and message in last_error(proc), (path, proc.stderr[-2000:])
        assert str(path) in last_error(proc)
    assert not marker.exists()

    other = run_cli(
        *base,
        f"ckpt_path={good}",
        "model.context_network.num_layers=2",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert other.returncode == 2
    assert "trained with other model settings (model.context_network.num_layers: 4 -> 2)" in (
        last_error(other)
    )

    # resume=true finds a truncated last.ckpt in the run folder
    run = tmp_path / "resumed"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(truncated.read_bytes())
    proc = run_cli(*base, "resume=true", f"hydra.run.dir={run}")
    assert proc.returncode == 2 and "last.ckpt: not a readable checkpoint" in last_error(proc)


def test_a_resume_says_which_changed_settings_take_effect(tmp_path, trained):
    """A resume (here of a checkpoint copied to another run folder) with a changed lr, max_steps
    (and with it the schedule's total_steps), batch size and masking: one line each, saying
    whether it takes effect; the lr indeed stays the checkpoint's (restored with the optimizer
    and its schedule), while the new schedule applies from the update after the resumed one."""
    manifests, good = trained  # 2 updates at lr 1e-3, linear decay to 0 at update 2
    run = tmp_path / "run"
    proc = run_cli(
        *FAST,
        f"data.manifest_dir={manifests}",
        "trainer.limit_val_batches=0",
        f"ckpt_path={good}",
        "optim.optimizer.lr=5e-4",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "data.max_tokens=120000",
        "model.masking.mask_prob=0.4",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [
        line.split(" - ", 1)[1]
        for line in (proc.stdout + proc.stderr).splitlines()
        if "changed since the checkpoint:" in line
    ]
    begin = "changed since the checkpoint: "
    assert said == [
        f"{begin}model.masking.mask_prob: 0.5 -> 0.4: takes effect (a training setting; the "
        "weights are the same)",
        f"{begin}data.max_tokens: 320000 -> 120000: takes effect, but the batches, their order "
        "or the updates change: the resumed run does not continue the checkpoint's exactly (the "
        "epoch in progress goes on after as many of the new batches as it had done)",
        f"{begin}optim.optimizer.lr: 0.001 -> 0.0005: does not take effect: the optimizer's "
        "settings are restored from the checkpoint with its state (and the LR schedule scales "
        f"the restored lr); to train with it, start a new run from these weights: init_from="
        f"{good} hydra.run.dir=NEW (fresh optimizer, schedule and step)",
        f"{begin}optim.scheduler.total_steps: 2 -> 4: takes effect from update 3 on: the "
        "schedule is the new one, of the step, scaled by the checkpoint's optim.optimizer.lr "
        "(update 2, the first after the resume, keeps the LR the checkpoint's schedule set)",
        f"{begin}trainer.log_every_n_steps: 10 -> 1: takes effect",
        f"{begin}trainer.max_steps: 2 -> 4: takes effect",
    ]
    assert "pretraining finished after 4 updates" in proc.stdout
    # update 2: the old schedule's 0 (it ended at 2); update 3: 1e-3 x (1 - 3/4), not 5e-4 x
    lr = dict(scalars(run)["train/lr"])
    assert lr[2] == 0 and lr[3] == pytest.approx(2.5e-4, rel=1e-6)
    # the run's checkpoints record the lr it trains with
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["run_config"]
    assert saved["optim"]["optimizer"]["lr"] == 1e-3
    assert saved["trainer"]["max_steps"] == 4


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


# -- bad manifests --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "body, message",
    [
        ("{root}\na.flac\n", "train.tsv:2: expected 2 tab-separated columns"),
        ("{root}\na.flac\tlots\n", "train.tsv:2: num_samples 'lots' is not an integer"),
        ("{root}\na.flac\t-3\n", "train.tsv:2: num_samples must be positive, got -3"),
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
