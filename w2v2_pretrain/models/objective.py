"""The objective: distractor sampling, contrastive logits, and the loss with its parts."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from w2v2_pretrain.models.noise import Noise


@dataclass
class Wav2Vec2Loss:
    """The pretraining loss and what is logged about it.

    ``total`` is summed over masked frames, as fairseq's criterion: contrastive (sum of
    cross-entropies) + diversity_weight * diversity * num_masked + penalty_weight *
    feature_penalty * num_masked. Divide by ``num_masked`` (summed over ranks) for the update.

    Shape: every field is a scalar tensor.
    """

    total: torch.Tensor
    contrastive: torch.Tensor
    diversity: torch.Tensor
    """(G*V - prob_perplexity) / (G*V): 0 with uniform code usage, near 1 when collapsed."""
    feature_penalty: torch.Tensor
    """Mean squared feature-encoder output over valid frames, before the LayerNorm."""
    num_masked: torch.Tensor
    correct: torch.Tensor
    count: torch.Tensor
    prob_perplexity: torch.Tensor
    """Perplexity of the batch-averaged softmax (no noise) over the masked frames: the frames
    fairseq quantizes (transformers averages over the same ones); padding is never masked."""
    code_perplexity: torch.Tensor
    """The same from hard counts of the chosen codes (at most G*V; logged only)."""
    identical_distractors: torch.Tensor
    """Fraction of distractors identical to their positive (excluded with -inf): near 1 when
    the targets have collapsed and the task has become trivial."""

    @property
    def accuracy(self) -> torch.Tensor:
        return self.correct.float() / self.count.float().clamp(min=1)


def _draw_excluding(
    own: torch.Tensor, population: int, num: int, noise: Noise | None, device: torch.device | str
) -> torch.Tensor:
    """``num`` uniform draws from ``0 .. population-1`` per position, never ``own``: draw from
    ``0 .. population-2`` and shift the draws at or above ``own`` up by one.

    Shape:
        own: (B, M, 1) -> (B, M, num)
    """
    B, M, _ = own.shape
    u = (noise or Noise()).rand((B, M, num), device)
    idx = (u * (population - 1)).long().clamp(max=population - 2)
    return idx + (idx >= own).long()


def sample_distractors(
    batch: int,
    num_masked: int,
    num_negatives: int,
    noise: Noise | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """K distractor indices per masked frame, drawn uniformly from the other masked frames of
    its utterance (never the positive itself).

    Shape:
        -> (B, M, K) int64 indices into the same row's M masked frames.
    """
    if num_masked < 2:
        raise ValueError(
            f"need at least 2 masked frames per utterance to draw distractors, got {num_masked}"
        )
    own = torch.arange(num_masked, device=device).view(1, num_masked, 1).expand(batch, -1, -1)
    return _draw_excluding(own, num_masked, num_negatives, noise, device)


def sample_cross_distractors(
    batch: int,
    num_masked: int,
    num_negatives: int,
    noise: Noise | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Distractors from the masked frames of every utterance (fairseq
    ``cross_sample_negatives``), never the positive itself.

    Shape:
        -> (B, M, K) int64 indices into the flattened (B * M) masked frames.
    """
    total = batch * num_masked
    own = torch.arange(total, device=device).view(batch, num_masked, 1)
    return _draw_excluding(own, total, num_negatives, noise, device)


def gather_distractors(
    targets: torch.Tensor, within: torch.Tensor | None, cross: torch.Tensor | None
) -> torch.Tensor:
    """Distractor vectors (or codes) for each masked frame.

    Shape:
        targets: (B, M, F); within: (B, M, K1) row indices; cross: (B, M, K2) flat indices
        -> (B, M, K1 + K2, F)
    """
    B, M, F_ = targets.shape
    parts = []
    if within is not None:
        rows = torch.arange(B, device=targets.device)[:, None, None]
        parts.append(targets[rows, within])
    if cross is not None:
        parts.append(targets.reshape(B * M, F_)[cross])
    return torch.cat(parts, dim=2)


def contrastive_logits(
    context: torch.Tensor,
    targets: torch.Tensor,
    within: torch.Tensor | None,
    cross: torch.Tensor | None,
    logit_temp: float,
    same: torch.Tensor,
) -> torch.Tensor:
    """Cosine similarity / kappa in float32 between the context and [positive, distractors].

    Context and targets are normalised once and every (context, target) pair of an utterance
    scored with one batched matrix multiply; the distractors' scores are gathered from it. This
    is the cosine similarity against gathered distractor vectors without building the
    (B, M, 1 + K, F) tensor of candidates: ~60x faster on CPU for BASE crops, and that tensor
    (and its gradient) never takes memory. A distractor identical to the positive (``same``:
    equal codes in every codebook, so the identical codevector) gets -inf, as fairseq. The
    positive is class 0.

    Shape:
        context, targets: (B, M, F); within: (B, M, K1) row indices; cross: (B, M, K2) flat
        indices into the B * M masked frames; same: (B, M, K1 + K2) bool -> (B, M, 1 + K)
    """
    B, M, F_ = targets.shape
    c = F.normalize(context.float(), dim=-1, eps=1e-8)
    t = F.normalize(targets.float(), dim=-1, eps=1e-8)
    parts = [(c * t).sum(-1, keepdim=True)]  # the positive
    if within is not None:
        parts.append(torch.bmm(c, t.transpose(1, 2)).gather(2, within))  # (B, M, M) -> K1
    if cross is not None:
        every = c.reshape(B * M, F_) @ t.reshape(B * M, F_).t()  # (B*M, B*M)
        parts.append(every.gather(1, cross.reshape(B * M, -1)).view(B, M, -1))
    scores = torch.cat(parts, dim=-1) / logit_temp
    blocked = scores[..., 1:].masked_fill(same, float("-inf"))
    return torch.cat([scores[..., :1], blocked], dim=-1)


def contrastive_accuracy(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(correct, count) as fairseq: argmax is the positive, not counting rows where the argmax
    and the argmin are both 0 (all logits equal).

    Shape:
        logits: (..., 1 + K) -> (), ()
    """
    flat = logits.reshape(-1, logits.shape[-1])
    best = flat.argmax(-1) == 0
    worst = flat.argmin(-1) == 0
    correct = best.long().sum() - (best & worst).long().sum()
    return correct, torch.full((), flat.shape[0], dtype=torch.long, device=logits.device)


def contrastive_loss(logits: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with the positive at index 0, summed over masked frames.

    Shape:
        logits: (..., 1 + K) -> ()
    """
    flat = logits.reshape(-1, logits.shape[-1]).float()
    target = torch.zeros(flat.shape[0], dtype=torch.long, device=flat.device)
    return F.cross_entropy(flat, target, reduction="sum")


def diversity_loss(prob_perplexity: torch.Tensor, num_codevectors: int) -> torch.Tensor:
    """(G*V - prob_perplexity) / (G*V): maximises the entropy of the averaged code usage."""
    return (num_codevectors - prob_perplexity) / num_codevectors
