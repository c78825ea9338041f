"""What every linear probe shares: a fixed training budget, and features standardised with the
fit set's statistics (so layers of different scales get the same optimiser budget)."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True, kw_only=True)
class LinearBudget:
    """The fixed training budget of a linear probe: full-batch AdamW for ``steps`` steps."""

    steps: int = 100
    lr: float = 0.05
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW)."""


def standardiser(frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and 1/std per dimension (float64 accumulation; constant dimensions get 1/std 1).

    Shape:
        frames: (N, D) -> (D,), (D,)
    """
    x = frames.double()
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    inv = torch.where(std > 1e-8, 1.0 / std.clamp_min(1e-8), torch.ones_like(std))
    return mean.to(frames.dtype), inv.to(frames.dtype)
