"""Log once per run: under DDP every rank builds the run, but a run-wide line is said once."""

from __future__ import annotations

import logging
from typing import Any

# the object Lightning sets the global rank on (importing it does not import all of Lightning)
from lightning_utilities.core.rank_zero import rank_zero_only


class RunLogger(logging.LoggerAdapter):
    """A logger whose records only global rank 0 emits (Lightning's ``rank_zero_only.rank``, 0
    where Lightning never set it: no Lightning run in this process);
    for what is true of the whole run. What is truly one rank's (a bad file that rank met) goes
    to a plain ``logging.getLogger``."""

    def log(self, level: int, msg: object, *args: Any, **kwargs: Any) -> None:
        if getattr(rank_zero_only, "rank", 0) == 0:
            super().log(level, msg, *args, **kwargs)


def run_logger(name: str) -> RunLogger:
    """The `RunLogger` over ``logging.getLogger(name)``."""
    return RunLogger(logging.getLogger(name), {})
