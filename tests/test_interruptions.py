"""A run survives crashes, kills and preemption and continues exactly: each case really happens
here (a real kill -9 and SIGTERM of a real w2v2-pretrain, a disk that fills, updates that turn
non-finite), and the resumed run's curve equals the uninterrupted one."""

from __future__ import annotations

import errno
import logging
import math
import os
import random
import re
import signal
import time
from pathlib import Path

import pytest
import torch
from helpers import (
    FAST,
    compose_cfg,
    run_cli,
    scalars,
)
from runs import (
    RESUMABLE,
    RecordUpdates,
    group_send,
    main_send,
    main_send_until_exit,
    resume_here,
    same_curve,
    start,
    wait_for,
)

from w2v2_pretrain import atomic
from w2v2_pretrain.errors import CheckpointWriteError, TrainingError
from w2v2_pretrain.train import build, train


def interrupted(manifests: Path, every: int, run: Path | None = None) -> list[str]:
    """The overrides of the reference's 14-update run (RESUMABLE) on ``manifests``, saving a
    periodic checkpoint every ``every`` updates; in ``run`` where the CLI starts it."""
    overrides = [
        *RESUMABLE,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=14",
        f"callbacks.periodic.every_n_train_steps={every}",
    ]
    return [*overrides, f"hydra.run.dir={run}"] if run else overrides


def signal_after_update_3(
    overrides: list[str], run: Path, signals, session: bool = False
) -> tuple[int, str, str]:
    """Starts the CLI, waits for its checkpoint at update 3, and at a random update of the 11
    left sends each ``(send, signal)`` of ``signals``, 0.3 s apart: (exit status, stdout,
    stderr)."""
    proc = start(*overrides, session=session)
    wait_for(lambda: (run / "checkpoints" / "step0000003.ckpt").is_file(), proc)
    time.sleep(random.uniform(0.0, 0.6))
    assert proc.poll() is None, "the run ended before the signals"
    for i, (send, sig) in enumerate(signals):
        time.sleep(0.3 if i else 0.0)
        send(proc, sig)
    out, err = proc.communicate(timeout=120)
    return proc.returncode, out, err


def test_kill_9_then_resume_continues_exactly(tmp_path, reference):
    """kill -9 at a random point, then resume=true: the run continues from the last checkpoint
    and the global step, LR, temperature and data order continue; what was written before the
    checkpoint (events, checkpoints) is kept."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = interrupted(manifests, 2, run)
    proc = start(*common)
    ckpts = run / "checkpoints"

    def saved_at_4() -> bool:  # step0000004.ckpt is written first, then last.ckpt again
        step4, last = ckpts / "step0000004.ckpt", ckpts / "last.ckpt"
        return step4.is_file() and last.stat().st_mtime_ns >= step4.stat().st_mtime_ns

    wait_for(saved_at_4, proc)
    # a random point among the 10 updates left (~0.15 s each here): the kill must land mid-run
    time.sleep(random.uniform(0.0, 0.6))
    assert proc.poll() is None, "the run ended before the kill"
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


# the SIGTERM sent to the whole group in the next test reaches the main process too (and
# with loader workers): this main-process-only variant is covered by it
@pytest.mark.slow
def test_sigterm_saves_at_the_current_update_and_requeue_continues(tmp_path, reference):
    """SIGTERM (what schedulers send before preemption): the run writes a checkpoint at the
    update it reached and exits with 143 and a line saying how to continue; the same command
    with resume=true continues exactly."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = interrupted(manifests, 3, run)
    status, out, err = signal_after_update_3(common, run, [(main_send, signal.SIGTERM)])
    assert status == 143, err[-3000:]
    assert "Traceback" not in err
    stopped = int(out.split("stopped by SIGTERM after ")[1].split(" ")[0])
    assert "continue with resume=true" in out
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == stopped >= 3
    proc = run_cli(*common, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, ref)


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
    common = interrupted(manifests, 3, run)
    workers = ["data.num_workers=2", "data.persistent_workers=true"]
    got, out, err = signal_after_update_3([*common, *workers], run, signals, session=True)
    assert got == status, err[-3000:]
    assert "Traceback" not in err and "killed by signal" not in err, err[-3000:]
    stopped = int(re.search(r"pretraining stopped by .* after (\d+) updates", out)[1])
    assert "continue with resume=true" in out
    assert (
        torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
        == (stopped)
        >= 3
    )
    assert resume_here(common, run).global_step == 14
    same_curve(run, ref)
    first, second = sorted((run / "configs").glob("start-*.yaml"))  # every start's config
    assert "resume: false" in first.read_text() and "resume: true" in second.read_text()


def test_sigterm_after_an_epochs_last_batch_resumes_exactly(tmp_path, reference):
    """SIGTERM at the end of an epoch's last batch (update 4 of 4 batches per epoch), before the
    epoch ends: Lightning's checkpoint then still counts the finished epoch's batches when it
    resumes in the next epoch; the requeued run must neither skip nor repeat a batch."""
    manifests, ref = reference
    run = tmp_path / "run"
    common = interrupted(manifests, 3)
    stop = ["+callbacks.sigterm._target_=runs.SigtermAt", "+callbacks.sigterm.step=4"]
    result = train(compose_cfg([*common, *stop], run))
    assert result.stopped_by == "SIGTERM" and result.global_step == 4
    result = train(compose_cfg([*common, "resume=true"], run))
    assert result.stopped_by is None and result.global_step == 14
    same_curve(run, ref)


def test_a_validation_interrupted_by_sigterm_is_redone_after_the_resume(tmp_path, trained):
    """SIGTERM while the validation at update 2 runs (its first of 3 batches done): the run
    stops with last.ckpt at update 2; after resume=true that validation is run again, whole,
    before update 3: val/loss at its step in TensorBoard, and best.ckpt is the checkpoint of
    that validation. (In this process: the signal reaches the run's handlers as it does from a
    scheduler; the exit status of a stopped run is the signal tests' above.)"""
    manifests, _ = trained
    run = tmp_path / "run"
    common = [
        *FAST,
        f"data.manifest_dir={manifests}",  # 6 clips: 3 batches of 2, for training and validation
        "data.max_tokens=80000",
        "trainer.max_steps=3",
        "trainer.val_check_interval=2",
        "trainer.log_every_n_steps=1",
    ]
    stop = ["+callbacks.stop._target_=runs.SigtermInValidation"]
    result = train(compose_cfg([*common, *stop], run))
    assert result.stopped_by == "SIGTERM" and result.global_step == 2
    assert not (run / "checkpoints" / "best.ckpt").exists()  # the validation did not finish
    assert "val/loss" not in scalars(run)

    result = train(compose_cfg([*common, "resume=true"], run))
    assert result.stopped_by is None and result.global_step == 3
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
    common = interrupted(manifests, 1, run)
    proc = start(*common)
    wait_for(lambda: (ckpts / "last.ckpt").is_file(), proc)
    wait_for(lambda: any(ckpts.glob(".last.ckpt.*.tmp")), proc)  # mid-save of last.ckpt
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    assert any(ckpts.glob(".last.ckpt.*.tmp"))  # the kill did land inside the save
    ckpt = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] >= 1 and "optimizer_states" in ckpt
    assert resume_here(common, run).global_step == 14
    assert not any(ckpts.glob(".*.tmp"))  # the stale temporary file is gone
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["global_step"] == 14


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
            "+callbacks.record._target_=runs.RecordUpdates",
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
    cfg = compose_cfg(interrupted(manifests, 2), run)
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


def test_a_resume_says_which_changed_settings_take_effect(tmp_path, trained, caplog):
    """A resume (here of a checkpoint copied to another run folder) with a changed lr, max_steps
    (and with it the schedule's total_steps), batch size and masking: one line each, saying
    whether it takes effect; the lr indeed stays the checkpoint's (restored with the optimizer
    and its schedule), while the new schedule applies from the update after the resumed one."""
    manifests, good = trained  # 2 updates at lr 1e-3, linear decay to 0 at update 2
    run = tmp_path / "run"
    overrides = [
        *FAST,
        f"data.manifest_dir={manifests}",
        "trainer.limit_val_batches=0",
        f"ckpt_path={good}",
        "optim.optimizer.lr=5e-4",
        "trainer.max_steps=4",
        "trainer.log_every_n_steps=1",
        "data.max_tokens=120000",
        "model.masking.mask_prob=0.4",
    ]
    with caplog.at_level(logging.INFO, logger="w2v2_pretrain"):
        result = train(compose_cfg(overrides, run))
    said = [m for m in caplog.messages if "changed since the checkpoint:" in m]
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
    assert result.stopped_by is None and result.global_step == 4
    # update 2: the old schedule's 0 (it ended at 2); update 3: 1e-3 x (1 - 3/4), not 5e-4 x
    lr = dict(scalars(run)["train/lr"])
    assert lr[2] == 0 and lr[3] == pytest.approx(2.5e-4, rel=1e-6)
    # the run's checkpoints record the lr it trains with
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["run_config"]
    assert saved["optim"]["optimizer"]["lr"] == 1e-3
    assert saved["trainer"]["max_steps"] == 4
