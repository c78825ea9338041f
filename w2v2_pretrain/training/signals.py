"""SIGTERM and Ctrl-C (SIGINT) as requests to stop at the next update boundary.

A scheduler's SIGTERM and a terminal's Ctrl-C reach every process of the job; the loader's
workers ignore both (data/workers.py) and the main process decides. During training, Lightning
stops after the current batch on SIGTERM (``Trainer.received_sigterm``, saving through
``save_on_exception``); `StopSignals` routes Ctrl-C to that same path. Lightning's own handling
of Ctrl-C cannot serve: ``_call_and_handle_interrupt`` in pytorch_lightning/trainer/call.py
catches the ``KeyboardInterrupt`` wherever the batch is, saves that half-done state as the
checkpoint and calls ``sys.exit(1)``, before the caller can print a summary or choose the exit
status.

A repeated SIGTERM changes nothing (schedulers and ``kill`` loops send several). A second
Ctrl-C stops at once, without a checkpoint of the update in progress: ``last.ckpt`` is the
previous save, whole (atomic writes).
"""

from __future__ import annotations

import os
import signal
import sys
from types import FrameType, TracebackType

from w2v2_pretrain.logs import run_logger

log = run_logger(__name__)

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Interrupted(BaseException):
    """A stop signal that came while no training loop could stop at an update boundary (set-up,
    the final validation): nothing to save at an update."""

    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.signal = name


class StopSignals:
    """Within the block, SIGTERM and SIGINT ask the run to stop after the current update.

    ``signal`` is the first one received (``"SIGTERM"``, ``"SIGINT"``), or None. Inside
    Lightning's loops (its SIGTERM handler installed, with this one chained) the loop stops at
    its next batch boundary; elsewhere the first signal raises `Interrupted`.
    """

    def __init__(self) -> None:
        self.signal: str | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for s in _SIGNALS:
            self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for s, handler in self._previous.items():
            if s == signal.SIGTERM and self.signal is not None:
                # the run is stopping: a repeated SIGTERM (schedulers send several, and to the
                # whole group) must not kill its last steps (the summary, the exit status)
                handler = signal.SIG_IGN
            signal.signal(s, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        first = self.signal is None
        if first:
            self.signal = name
        elif signum == signal.SIGINT and self.signal == "SIGINT":
            print(
                "\nsecond Ctrl-C: stopped now, without saving this update "
                "(resume=true continues from the last checkpoint)",
                file=sys.stderr,
                flush=True,
            )
            os._exit(130)
        lightning = signal.getsignal(signal.SIGTERM)
        if lightning != self._handle and callable(lightning):  # inside Lightning's loops
            if first:
                log.warning("%s: stopping after the current update, with a checkpoint", name)
            if signum == signal.SIGINT:  # Lightning's SIGTERM path (it chains back here)
                lightning(signal.SIGTERM, frame)
            return
        if first:
            raise Interrupted(name)
