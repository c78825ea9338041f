"""What a representation looks like without labels: its effective rank (RankMe) and how well
its frames cluster (k-means silhouette and cluster-use perplexity). Every subsample is drawn
from a seeded ``torch.Generator``.

Shapes: N frames, D feature dimension.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from w2v2_pretrain.probes.linear import standardiser


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
