"""Probe metrics on frozen features, in pure torch: what a representation makes linearly
available (characters through CTC, speakers), and what it looks like without labels (effective
rank, cluster quality).

Every probe here is deterministic: the linear probes start from fixed weights (a closed-form
least-squares fit for CTC, zeros for speakers) and train full-batch with AdamW for a fixed
number of steps, and every subsample is drawn from a seeded ``torch.Generator``. Features are
standardised with the fit set's statistics, so layers of different scales get the same
optimiser budget.

Shapes: N utterances (or frames), T frames, D feature dimension, V characters, S speakers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

BLANK = "<blank>"


# -- characters ---------------------------------------------------------------------------------


def edit_distance(hyp: Sequence, ref: Sequence) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions from ``hyp``
    to ``ref``."""
    prev = list(range(len(ref) + 1))
    for i, h in enumerate(hyp, 1):
        cur = [i]
        for j, r in enumerate(ref, 1):
            cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (h != r)))
        prev = cur
    return prev[-1]


def character_error_rate(hyps: Sequence[str], refs: Sequence[str]) -> float:
    """Edit distance summed over utterances, divided by the reference characters (spaces
    count): 0 is perfect, 1 is e.g. an empty output; insertions can push it past 1."""
    chars = sum(len(r) for r in refs)
    if chars == 0:
        raise ValueError("character_error_rate: the references hold no characters")
    return sum(edit_distance(h, r) for h, r in zip(hyps, refs, strict=True)) / chars


@dataclass(frozen=True)
class CharacterVocabulary:
    """The probe's output classes: the CTC blank (index 0), then each character."""

    chars: tuple[str, ...]

    @staticmethod
    def of(texts: Sequence[str]) -> CharacterVocabulary:
        return CharacterVocabulary(tuple(sorted({c for t in texts for c in t})))

    def __len__(self) -> int:
        return len(self.chars) + 1

    def encode(self, text: str) -> list[int]:
        """Character indices (1-based; characters outside the vocabulary are left out)."""
        index = {c: i + 1 for i, c in enumerate(self.chars)}
        return [index[c] for c in text if c in index]

    def decode_greedy(self, best: Sequence[int]) -> str:
        """CTC's greedy decoding of per-frame best classes: merge repeats, drop blanks."""
        out, last = [], 0
        for k in best:
            if k != last and k != 0:
                out.append(self.chars[k - 1])
            last = k
        return "".join(out)


@dataclass(frozen=True)
class CTCProbeResult:
    """A linear CTC probe's character error rate on held-out utterances.

    ``fit_loss``: the CTC loss per target character on the fit set after the last step;
    ``hypotheses``: the greedy transcripts of the held-out utterances.
    """

    cer: float
    fit_loss: float
    num_fit: int
    num_test: int
    num_test_chars: int
    hypotheses: tuple[str, ...]


@dataclass(frozen=True, kw_only=True)
class LinearBudget:
    """The fixed training budget of a linear probe: full-batch AdamW for ``steps`` steps."""

    steps: int = 100
    lr: float = 0.05
    weight_decay: float = 1e-4
    """Decoupled weight decay (AdamW)."""


RIDGE = 10.0  # L2 weight of the warm start's least squares, on standardised features
WARM_SCALE = 10.0  # least-squares outputs are near 0..1; scaled, they are confident logits


def _pad(features: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, T_max, D) zero-padded stack and (N,) lengths of N (T_i, D) tensors."""
    lengths = torch.tensor([len(f) for f in features], dtype=torch.long)
    return torch.nn.utils.rnn.pad_sequence(list(features), batch_first=True), lengths


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


def peaky_labels(num_frames: int, targets: Sequence[int]) -> torch.Tensor:
    """A guess at a CTC alignment with no model: the S characters at the centres of S equal
    segments of the utterance, blank (0) elsewhere.

    Shape:
        -> (T,) class per frame
    """
    labels = torch.zeros(num_frames, dtype=torch.long)
    if targets:
        S = len(targets)
        centres = ((torch.arange(S) + 0.5) * num_frames / S).long().clamp(max=num_frames - 1)
        labels[centres] = torch.tensor(list(targets), dtype=torch.long)
    return labels


def warm_start(frames: torch.Tensor, labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Ridge regression of one-hot labels on (standardised) frames, in closed form: a linear
    layer's starting weights, with the bias as the last row.

    Shape:
        frames: (N, D), labels: (N,) -> (D + 1, num_classes)
    """
    x = torch.cat([frames.double(), torch.ones(len(frames), 1, dtype=torch.double)], 1)
    y = F.one_hot(labels, num_classes).double()
    gram = x.T @ x + RIDGE * torch.eye(x.shape[1], dtype=torch.double, device=x.device)
    return torch.linalg.solve(gram, x.T @ y).to(frames.dtype)


def _fit_ctc(
    layer: torch.nn.Linear,
    x: torch.Tensor,
    lengths: torch.Tensor,
    targets: Sequence[list[int]],
    budget: LinearBudget,
) -> torch.Tensor:
    """``budget.steps`` full-batch AdamW steps of ``layer`` on the CTC loss per target
    character; the last loss.

    Shape:
        x: (N, T, D), lengths: (N,) -> ()
    """
    target_lengths = torch.tensor([len(t) for t in targets], dtype=torch.long)
    flat = torch.tensor([c for t in targets for c in t], dtype=torch.long, device=x.device)
    opt = torch.optim.AdamW(layer.parameters(), lr=budget.lr, weight_decay=budget.weight_decay)
    loss = torch.zeros(())
    with torch.enable_grad():
        for _ in range(budget.steps):
            log_probs = layer(x).log_softmax(-1).transpose(0, 1)  # (T, N, V+1)
            loss = F.ctc_loss(
                log_probs,
                flat,
                lengths,
                target_lengths,
                blank=0,
                reduction="sum",
                zero_infinity=True,
            ) / target_lengths.sum().clamp_min(1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return loss


def ctc_probe(
    fit: Sequence[torch.Tensor],
    fit_texts: Sequence[str],
    test: Sequence[torch.Tensor],
    test_texts: Sequence[str],
    budget: LinearBudget = LinearBudget(),
) -> CTCProbeResult:
    """Train a linear layer from frame features to characters with CTC, score greedy CER.

    The layer starts from a closed-form ridge fit to `peaky_labels` (characters spread evenly
    over each utterance), then trains with CTC for ``budget.steps`` full-batch AdamW steps:
    the warm start reaches in a few dozen steps what zero weights reach in hundreds (the CTC
    loss is what a probe round spends its time on). The vocabulary is the fit transcripts'
    characters; a held-out character outside it counts as an error. Utterances with fewer
    frames than CTC needs for their transcript add no gradient (``zero_infinity``) and are
    scored like any other.

    Shape:
        fit[i]: (T_i, D); test[i]: (T_i, D)
    """
    vocab = CharacterVocabulary.of(fit_texts)
    device = fit[0].device
    targets = [vocab.encode(t) for t in fit_texts]
    frames = torch.cat(list(fit))  # (sum T, D)
    mean, inv = standardiser(frames)
    labels = torch.cat([peaky_labels(len(f), t) for f, t in zip(fit, targets, strict=True)])
    w = warm_start((frames - mean) * inv, labels.to(device), len(vocab)) * WARM_SCALE
    x, lengths = _pad(fit)  # (N, T, D)
    x = (x - mean) * inv
    layer = torch.nn.Linear(x.shape[-1], len(vocab)).to(device)
    with torch.no_grad():
        layer.weight.copy_(w[:-1].T)
        layer.bias.copy_(w[-1])
    loss = _fit_ctc(layer, x, lengths, targets, budget)
    hyps = []
    with torch.no_grad():
        for f in test:
            best = layer((f - mean) * inv).argmax(-1).tolist()  # (T,)
            hyps.append(vocab.decode_greedy(best))
    return CTCProbeResult(
        cer=character_error_rate(hyps, test_texts),
        fit_loss=float(loss.detach()),
        num_fit=len(fit),
        num_test=len(test),
        num_test_chars=sum(len(t) for t in test_texts),
        hypotheses=tuple(hyps),
    )


# -- speakers -----------------------------------------------------------------------------------


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
    budget: LinearBudget = LinearBudget(),
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


# -- without labels -----------------------------------------------------------------------------


def rankme(frames: torch.Tensor, eps: float = 1e-7) -> float:
    """Effective rank (RankMe, Garrido et al. 2023, arXiv 2210.02885): exp of the entropy of
    the singular values normalised to sum 1. Between 1 (all frames on one line) and D (a
    spectrum as flat as white noise's).

    Shape:
        frames: (N, D)
    """
    x = frames.double()
    # singular values from the (D, D) Gram matrix: cheap for N >> D, exact enough in float64
    s = torch.linalg.eigvalsh(x.T @ x).clamp_min(0).sqrt()
    p = s / s.sum().clamp_min(eps) + eps
    return float(torch.exp(-(p * p.log()).sum()))


def subsample(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    """Sorted indices of ``min(n, k)`` of ``range(n)``, drawn without replacement."""
    if n <= k:
        return torch.arange(n)
    return torch.randperm(n, generator=generator)[:k].sort().values


def kmeans(
    x: torch.Tensor, k: int, generator: torch.Generator, iterations: int = 20
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means with k-means++ seeding (deterministic for the generator).

    Shape:
        x: (N, D) -> centroids (k, D), labels (N,)
    """
    n = len(x)
    k = min(k, n)
    first = int(torch.randint(n, (1,), generator=generator))
    centroids = [x[first]]
    d2 = (x - x[first]).pow(2).sum(-1)
    for _ in range(1, k):
        weights = d2.cpu().double()
        if float(weights.sum()) <= 0:
            pick = int(torch.randint(n, (1,), generator=generator))
        else:
            pick = int(torch.multinomial(weights, 1, generator=generator))
        centroids.append(x[pick])
        d2 = torch.minimum(d2, (x - x[pick]).pow(2).sum(-1))
    c = torch.stack(centroids)
    labels = torch.cdist(x, c).argmin(-1)
    for _ in range(iterations):
        counts = torch.bincount(labels, minlength=k).to(x.dtype)
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        c = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], c)
        new = torch.cdist(x, c).argmin(-1)
        if torch.equal(new, labels):
            break
        labels = new
    return c, labels


def silhouette(x: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean silhouette coefficient (Rousseeuw 1987): per point (b - a) / max(a, b), with a its
    mean distance to its own cluster and b to the nearest other; 0 for singleton clusters.
    From -1 to 1; higher means tighter, better separated clusters.

    Shape:
        x: (N, D), labels: (N,)
    """
    ids, labels = labels.unique(return_inverse=True)
    k = len(ids)
    if k < 2:
        return 0.0
    dist = torch.cdist(x.double(), x.double())  # (N, N)
    onehot = F.one_hot(labels, k).double()  # (N, k)
    sizes = onehot.sum(0)  # (k,)
    totals = dist @ onehot  # (N, k) summed distance to each cluster
    own = sizes[labels]
    a = totals.gather(1, labels[:, None])[:, 0] / (own - 1).clamp_min(1)
    other = totals / sizes[None, :]
    other.scatter_(1, labels[:, None], math.inf)
    b = other.min(1).values
    s = (b - a) / torch.maximum(a, b).clamp_min(1e-12)
    s = torch.where(own > 1, s, torch.zeros_like(s))
    return float(s.mean())


@dataclass(frozen=True)
class ClusterResult:
    """k-means of standardised frame features: the silhouette (cluster quality, as in
    Whetten et al. 2025, arXiv 2501.05966) and the perplexity of the cluster use (how many of
    the k clusters the frames effectively occupy)."""

    silhouette: float
    perplexity: float
    k: int
    num_frames: int


def cluster_quality(
    frames: torch.Tensor, k: int, max_frames: int, generator: torch.Generator
) -> ClusterResult:
    """k-means (k-means++ seeded) on at most ``max_frames`` standardised frames.

    Shape:
        frames: (N, D)
    """
    x = frames[subsample(len(frames), max_frames, generator).to(frames.device)].float()
    mean, inv = standardiser(x)
    x = (x - mean) * inv
    _, labels = kmeans(x, k, generator)
    p = torch.bincount(labels, minlength=k).double() / len(labels)
    perplexity = float(torch.exp(-(p[p > 0] * p[p > 0].log()).sum()))
    return ClusterResult(silhouette(x, labels), perplexity, k, len(x))
