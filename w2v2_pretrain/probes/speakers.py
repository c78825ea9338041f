"""What a representation makes linearly available of the speaker: multinomial logistic
regression from utterance-mean features, trained full batch from zero weights."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from w2v2_pretrain.probes.linear import LinearBudget, standardiser


@dataclass(frozen=True)
class SpeakerProbeResult:
    """A linear speaker classifier's accuracy on held-out utterances; ``chance``: the share of
    the held-out set's most frequent speaker (what always guessing it scores)."""

    accuracy: float
    chance: float
    num_speakers: int
    num_fit: int
    num_test: int


def speaker_probe(
    fit: torch.Tensor,
    fit_speakers: Sequence[str],
    test: torch.Tensor,
    test_speakers: Sequence[str],
    budget: LinearBudget | None = None,
) -> SpeakerProbeResult:
    """Multinomial logistic regression from utterance-mean features to speakers.

    Held-out utterances of a speaker absent from the fit set count as errors.

    Shape:
        fit: (N, D) utterance means; test: (M, D)
    """
    names = sorted(set(fit_speakers))
    index = {s: i for i, s in enumerate(names)}
    y = torch.tensor([index[s] for s in fit_speakers], device=fit.device)
    mean, inv = standardiser(fit)
    x = (fit - mean) * inv
    layer = torch.nn.Linear(fit.shape[1], len(names)).to(fit.device)
    torch.nn.init.zeros_(layer.weight)
    torch.nn.init.zeros_(layer.bias)
    budget = budget or LinearBudget()
    opt = torch.optim.AdamW(layer.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    with torch.enable_grad():
        for _ in range(budget.steps):
            loss = F.cross_entropy(layer(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    with torch.no_grad():
        predicted = layer((test - mean) * inv).argmax(-1).tolist()
    correct = sum(names[p] == s for p, s in zip(predicted, test_speakers, strict=True))
    most = max(test_speakers.count(s) for s in set(test_speakers))
    return SpeakerProbeResult(
        accuracy=correct / len(test_speakers),
        chance=most / len(test_speakers),
        num_speakers=len(names),
        num_fit=len(fit_speakers),
        num_test=len(test_speakers),
    )
