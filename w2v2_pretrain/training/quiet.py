"""What Lightning prints that a run's user does not need: switched off where the run starts."""

from __future__ import annotations

import logging
import warnings

# Lightning's rank-zero messages ("GPU available: ...", tips) go through this logger.
_RANK_ZERO_LOGGER = "pytorch_lightning.utilities.rank_zero"


class _NoTips(logging.Filter):
    """Drops Lightning's "💡 Tip:" advertisements (litlogger, litmodels); Lightning has no
    setting for them: they print whenever the run uses neither."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡 Tip:")


_NO_TIPS = _NoTips()


def quiet_lightning() -> None:
    """Silence Lightning's tips and one deprecation warning of its own making. Idempotent;
    call it before the Trainer is built (the tips print in its constructor)."""
    logging.getLogger(_RANK_ZERO_LOGGER).addFilter(_NO_TIPS)
    # Lightning's pytree helper still builds torch's deprecated LeafSpec when it wraps the data
    # loaders; nothing for the user to change (Lightning-AI/pytorch-lightning#21326).
    warnings.filterwarnings(
        "ignore",
        message=r"`isinstance\(treespec, LeafSpec\)` is deprecated",
        category=FutureWarning,
        module=r"pytorch_lightning\.utilities\._pytree",
    )
