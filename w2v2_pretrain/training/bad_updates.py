"""Skipping a bad update without waiting on the device, and stopping after too many in a row.

An update whose loss or gradients are not finite (or that holds no usable audio) is skipped:
the weights and optimizer state stay as they were. With a fused Adam/AdamW the skip is the
optimizer's own ``found_inf`` flag (the mechanism the AMP grad scaler uses), so the decision
never leaves the device; `StreakReader` reads the streak of bad updates back only while one is
running, so a healthy update waits for nothing.
"""

from __future__ import annotations

import torch


def takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips its step on device when ``optimizer.found_inf`` is 1 (torch's
    fused Adam and AdamW)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps optimizers
    return isinstance(inner, torch.optim.Adam) and bool(inner.defaults.get("fused"))


def scale_gradients(
    params: list[torch.nn.Parameter], num_masked: torch.Tensor, scale: float
) -> torch.Tensor:
    """Multiply the gradients by ``scale / num_masked`` (0 when nothing was masked), in place;
    their total norm after.

    ``scale`` undoes what Lightning and DDP divided by (the accumulation and the world size),
    so the gradient is the sum over every masked frame of the update divided by their number.
    """
    grads = [p.grad for p in params]
    if not grads:
        return torch.zeros((), device=num_masked.device)
    factor = torch.where(num_masked > 0, scale / num_masked.clamp(min=1), 0.0).float()
    torch._foreach_mul_(grads, factor)
    return torch.nn.utils.get_total_norm(grads)


class StreakReader:
    """The streak of bad updates in a row, read from the device only while one is running.

    Each update queues a copy of its streak to host memory (non-blocking); the next update
    reads that copy, so an update without a running streak waits for nothing. A streak's first
    update is therefore seen one update late, which still stops at exactly
    ``max_bad_updates`` (from 2 on; with 1 every update reads its own streak).
    """

    def __init__(self, max_bad_updates: int) -> None:
        self.max_bad_updates = max_bad_updates
        self._seen: torch.Tensor | None = None  # the last update's streak, on the host
        self._copied: torch.cuda.Event | None = None

    def read(self, streak: torch.Tensor) -> int:
        """The streak including this update (``streak``, a 0-d device tensor); 0 when none was
        running before this update."""
        running = self.max_bad_updates <= 1
        if self._seen is not None:
            if self._copied is not None:
                self._copied.synchronize()  # the previous update's copy: long done
            running |= bool(self._seen.numpy() > 0)  # host memory: no device read
        else:
            pinned = streak.device.type == "cuda"
            self._seen = torch.zeros((), dtype=torch.float64, pin_memory=pinned)
        self._seen.copy_(streak, non_blocking=True)
        if streak.device.type == "cuda":
            self._copied = torch.cuda.Event()
            self._copied.record()
        return int(streak) if running else 0
