"""Runs of the real w2v2-pretrain to interrupt and compare: the short resumable recipe, the CLI in
the background, the signals as clusters send them, and callbacks a run can be given from the
command line (+callbacks.NAME._target_=runs.NAME, with tests/ on PYTHONPATH)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
from helpers import (
    CLI,
    FAST,
    scalars,
)
from typing_extensions import override

from w2v2_pretrain.paths import REPO_ROOT


def last_error(proc: subprocess.CompletedProcess) -> str:
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[-1] if lines else ""


RESUMABLE = [
    *FAST,
    "data.max_tokens=120000",
    "optim.scheduler.total_steps=14",
    "optim.scheduler.warmup=3",
    "trainer.log_every_n_steps=1",
    "trainer.val_check_interval=1000",
    "trainer.limit_val_batches=0",
]


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


def resume_here(overrides: list[str], run: Path):
    """``resume=true`` of a run the test started through the CLI, in this process as the CLI
    runs it (the requeue; a fresh CLI start costs ~5 s of imports): the `TrainResult`."""
    from helpers import compose_cfg

    from w2v2_pretrain.train import train

    kept = [o for o in overrides if not o.startswith("hydra.run.dir=")]
    return train(compose_cfg([*kept, "resume=true"], run))


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
        steps = sorted({s for s, _ in got[tag]})
        assert steps == sorted(want) == list(range(14)), (tag, steps)
        for step, value in got[tag]:
            assert value == pytest.approx(want[step], rel=1e-5, abs=1e-7), (tag, step)


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


class SigtermAt(pl.Callback):
    """Sends its own process SIGTERM at the end of update ``step``, as a scheduler might."""

    def __init__(self, step: int) -> None:
        self.step = step

    @override
    def on_train_batch_end(self, trainer: pl.Trainer, *args: object) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


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


class SigtermInValidation(pl.Callback):
    """Sends its own process SIGTERM after the first batch of the first validation in
    training: the stop lands inside the validation, with batches left to go."""

    @override
    def on_validation_batch_end(self, trainer: pl.Trainer, *args: object, **kwargs: object):
        if not trainer.sanity_checking and not trainer.received_sigterm:
            os.kill(os.getpid(), signal.SIGTERM)


class RecordUpdates(pl.Callback):
    """Records each finished update's loss and bad-update streak (test-side host reads)."""

    losses: list[float] = []
    streaks: list[int] = []

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, *args: object) -> None:
        RecordUpdates.losses.append(float(outputs["loss"]))
        RecordUpdates.streaks.append(int(pl_module.bad_streak))
