"""Where the model's random draws come from (masks, distractors, Gumbel noise).

Every draw has the batch as its first dimension, so a source can either draw the whole tensor
from one generator (`Noise`, the fast default) or draw each row from its own generator seeded by
the utterance (`PerUtteranceNoise`): then an utterance gets the same masks, distractors and
Gumbel noise whichever batch, rank or step it lands in. That makes overfitting one batch truly
repeat, and a 2-process run comparable with a 1-process run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


class Noise:
    """Uniform draws from one generator (None: torch's default generator of the device)."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        self.generator = generator

    def rand(self, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        """Uniform [0, 1) float32 of ``shape``."""
        if self.generator is not None and self.generator.device != torch.device(device):
            return torch.rand(*shape, generator=self.generator).to(device)
        return torch.rand(*shape, generator=self.generator, device=device)


def mix_seed(*parts: int) -> int:
    """A 63-bit generator seed from integers (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr(tuple(int(p) for p in parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class PerUtteranceNoise(Noise):
    """Row ``b`` of every draw comes from a generator seeded by ``(seed, *keys[b])``.

    Args:
        keys: (B,) one key per utterance: its manifest index, or a tuple such as
            (epoch, index) so that each epoch draws anew.
        seed: shared seed; change it to change every draw.
    """

    def __init__(
        self, keys: torch.Tensor | Sequence[int] | Sequence[tuple[int, ...]], seed: int = 0
    ) -> None:
        super().__init__(None)
        if isinstance(keys, torch.Tensor):
            keys = keys.tolist()
        self.generators = []
        for key in keys:
            g = torch.Generator()
            g.manual_seed(mix_seed(seed, *(key if isinstance(key, (tuple, list)) else (key,))))
            self.generators.append(g)

    def rand(self, shape: Sequence[int], device: torch.device | str = "cpu") -> torch.Tensor:
        if shape[0] != len(self.generators):
            raise ValueError(f"draw of {shape[0]} rows from noise for {len(self.generators)}")
        rows = [torch.rand(tuple(shape[1:]), generator=g) for g in self.generators]
        return torch.stack(rows).to(device)
