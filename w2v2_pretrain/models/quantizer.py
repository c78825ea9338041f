"""The quantization module: Gumbel-softmax product quantizer (paper section 2)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from w2v2_pretrain.models.noise import Noise


@dataclass
class QuantizerOutput:
    """Codevectors for a set of frames, the chosen codes and the usage statistics.

    Shape:
        quantized: (B, M, codevector_dim) concatenated codevectors.
        codes: (B, M, G) index of the chosen entry per codebook.
        prob_perplexity: () sum over codebooks of exp(entropy) of the batch-averaged softmax
            (no Gumbel noise, no temperature): what the diversity loss maximises.
        code_perplexity: () the same from hard counts of the chosen codes (logged only).
    """

    quantized: torch.Tensor
    codes: torch.Tensor
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor


PERPLEXITY_EPS = 1e-7
"""Added inside the log of the entropy, as fairseq (``avg * log(avg + 1e-7)``): the gradient stays
finite where an entry's mean probability is exactly 0 (``xlogy`` back-propagates NaN there once
a softmax underflows). It lowers each codebook's entropy by at most V * 1e-7 nats."""


def perplexity(probs: torch.Tensor) -> torch.Tensor:
    """Sum over codebooks of exp(entropy) of the mean distribution.

    Entropy as fairseq: ``-sum(avg * log(avg + PERPLEXITY_EPS))``, finite in value and gradient
    for any probabilities, exact zeros included. transformers uses ``xlogy`` (NaN gradient at
    zeros); the two differ by at most V * 1e-7 in each codebook's entropy.

    Shape:
        probs: (N, G, V) -> ()
    """
    avg = probs.float().mean(dim=0)
    return torch.exp(-(avg * torch.log(avg + PERPLEXITY_EPS)).sum(-1)).sum()


class GumbelQuantizer(nn.Module):
    """G codebooks of V entries; one entry per codebook is chosen and the choices concatenated.

    Training forward uses the hard one-hot of the argmax of a Gumbel-softmax sample and
    backward the gradient of the soft sample (straight-through); eval uses a plain argmax.

    Args:
        input_dim: width of the features to quantize (the feature encoder's channels, 512).
        num_groups: G (fairseq ``latent_groups``, 2).
        num_vars: V (fairseq ``latent_vars``, 320).
        codevector_dim: width of the concatenated codevector (BASE 256, LARGE 768).
    """

    def __init__(
        self, *, input_dim: int, num_groups: int, num_vars: int, codevector_dim: int
    ) -> None:
        super().__init__()
        self.num_groups = num_groups
        self.num_vars = num_vars
        self.logits_proj = nn.Linear(input_dim, num_groups * num_vars)
        nn.init.normal_(self.logits_proj.weight, mean=0.0, std=1.0)
        nn.init.zeros_(self.logits_proj.bias)
        self.codebook = nn.Parameter(
            torch.empty(num_groups, num_vars, codevector_dim // num_groups).uniform_()
        )

    def forward(
        self, x: torch.Tensor, temperature: float, noise: Noise | None = None
    ) -> QuantizerOutput:
        """Quantize every frame of ``x``; perplexities average over all of them.

        Shape:
            x: (B, M, C) -> quantized (B, M, codevector_dim), codes (B, M, G)
        """
        B, M, _ = x.shape
        G, V = self.num_groups, self.num_vars
        logits = self.logits_proj(x).float().view(B, M, G, V)
        if self.training:
            u = (noise or Noise()).rand((B, M, G, V), x.device)
            tiny = torch.finfo(torch.float32).tiny
            gumbels = -torch.log(-torch.log(u.clamp(min=tiny, max=1 - 1e-7)))
            soft = torch.softmax((logits + gumbels) / temperature, dim=-1)
            codes = soft.argmax(-1)
            hard = one_hot(codes, V)
            # exactly one-hot forward (soft - soft.detach() is 0); gradient of the soft sample
            onehot = hard + (soft - soft.detach())
        else:
            codes = logits.argmax(-1)
            onehot = one_hot(codes, V)
        quantized = torch.einsum("bmgv,gvd->bmgd", onehot.to(self.codebook.dtype), self.codebook)
        flat_probs = torch.softmax(logits, dim=-1).view(B * M, G, V)
        return QuantizerOutput(
            quantized=quantized.reshape(B, M, -1),
            codes=codes,
            prob_perplexity=perplexity(flat_probs),
            code_perplexity=perplexity(one_hot(codes, V).view(B * M, G, V).detach()),
        )


def one_hot(codes: torch.Tensor, num_classes: int) -> torch.Tensor:
    """float32 one-hot by scatter (no check of the codes' range that would read them back).

    Shape:
        codes: (...) int64 -> (..., num_classes)
    """
    out = torch.zeros(*codes.shape, num_classes, device=codes.device)
    return out.scatter_(-1, codes.unsqueeze(-1), 1.0)
