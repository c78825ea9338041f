"""DataLoader workers that leave stopping to the main process.

SLURM (time limit, ``scancel``, preemption), systemd and a terminal's Ctrl-C signal every
process of the job, the loader's workers too. A worker that dies of it makes the main process
fail in the middle of a batch (``DataLoader worker (pid N) is killed by signal: Terminated``),
before it could finish the update and save. Workers ignore SIGTERM and SIGINT: the main process
stops at the next update boundary (training/signals.py) and ends its workers as it does at the
end of every epoch; a worker whose main process died exits by itself (torch's watchdog).
"""

from __future__ import annotations

import os
import signal
from functools import partial

from lightning_fabric.utilities.seed import pl_worker_init_function


def _init_worker(worker_id: int, rank: int) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # what Lightning adds when the loader has no worker_init_fn of its own
    # (seed_everything(workers=True), as train() calls it)
    if int(os.environ.get("PL_SEED_WORKERS", 0)):
        pl_worker_init_function(worker_id, rank)


def worker_init_fn(rank: int) -> partial:
    """The loader's ``worker_init_fn`` for global rank ``rank``."""
    return partial(_init_worker, rank=rank)
