"""Learning-rate schedule as a function of the optimizer step (so it is right under gradient
accumulation and after a resume; the Gumbel temperature is `QuantizerConfig.temperature_at`)."""

from __future__ import annotations

from functools import partial

import torch

from w2v2_pretrain.errors import ConfigError


def warmup_polynomial(step: int, warmup: int, total: int, power: float = 1.0) -> float:
    """LR multiplier: linear warm-up to 1 over ``warmup`` updates, then polynomial decay to 0
    at ``total`` updates (fairseq ``polynomial_decay``; power 1 is linear). Update ``step``
    (0-based) uses ``(step + 1) / warmup`` during warm-up, so the first update is not wasted."""
    if step < warmup:
        return (step + 1) / warmup
    if step >= total:
        return 0.0
    return (1.0 - (step - warmup) / max(1, total - warmup)) ** power


def warmup_updates(warmup: float, total_steps: int) -> int:
    """Warm-up in updates: ``warmup`` itself, or that fraction of ``total_steps`` if below 1."""
    return int(round(warmup * total_steps)) if 0 < warmup < 1 else int(warmup)


def polynomial_decay(
    optimizer: torch.optim.Optimizer, total_steps: int, warmup: float = 0.08, power: float = 1.0
) -> torch.optim.lr_scheduler.LambdaLR:
    """The paper's schedule as a LambdaLR stepped once per optimizer update.

    Args:
        total_steps: updates until the LR reaches 0 (BASE: 400k).
        warmup: updates of linear warm-up, or a fraction of ``total_steps`` if below 1
            (BASE: 32k = 8%).
        power: decay exponent (1: linear).
    """
    if total_steps is None or total_steps <= 0:
        raise ConfigError(
            f"optim.scheduler.total_steps must be a positive number of updates, "
            f"got {total_steps} (set trainer.max_steps)"
        )
    if warmup < 0:
        raise ConfigError(f"optim.scheduler.warmup must be >= 0, got {warmup}")
    steps = warmup_updates(warmup, total_steps)
    if steps > total_steps:
        raise ConfigError(
            f"optim.scheduler.warmup ({steps} updates) exceeds total_steps ({total_steps})"
        )
    fn = partial(warmup_polynomial, warmup=steps, total=total_steps, power=power)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, fn)
