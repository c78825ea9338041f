"""Length-bucketed batches under a budget of samples, sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from torch.utils.data import Sampler

from w2v2_pretrain.errors import DataError


def corpus_shares(
    hours: np.ndarray, weights: Sequence[float] | None = None, alpha: float | None = None
) -> np.ndarray:
    """Each corpus's sampled share: natural, from explicit weights, or temperature-scaled.

    Natural (neither given): ``hours_c / total``. ``weights``: ``weights_c / sum(weights)``.
    ``alpha`` (``data.corpus_weights=temperature``): proportional to ``(hours_c / total) **
    alpha``, as XLS-R samples its languages (alpha 0.5); alpha 1 is the natural share, and
    smaller alphas move the shares toward uniform.

    Args:
        hours: (C,) hours of audio per corpus (the datamodule passes them as the manifests
            list them, before the ``max_sample_size`` crop).
        weights: (C,) positive weights, or None.
        alpha: the exponent, in (0, 1], or None.

    Returns:
        (C,) float64 shares, summing to 1.
    """
    hours = np.asarray(hours, dtype=np.float64)
    if weights is not None and alpha is not None:
        raise ValueError("corpus_shares: explicit weights or a temperature alpha, not both")
    if weights is not None:
        raw = np.asarray(weights, dtype=np.float64)
        if raw.shape != hours.shape or not (raw > 0).all():
            raise ValueError(f"corpus_shares: one positive weight per corpus, got {weights}")
        return raw / raw.sum()
    if alpha is not None and not 0 < alpha <= 1:
        raise ValueError(f"corpus_shares: alpha must be in (0, 1], got {alpha}")
    if not (hours >= 0).all() or not hours.sum() > 0:
        raise DataError(f"no audio to share out among the corpora (hours {hours.tolist()})")
    natural = hours / hours.sum()
    if alpha is None:
        return natural
    raw = natural**alpha
    return raw / raw.sum()


def draw_by_share(
    count: int, want: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """``want`` draws from ``count`` items (a corpus's batches or shards): every item once per
    whole multiple, the remainder at random without repeats. (want,) the items drawn and
    (want,) each draw's copy number (an upsampled item's copies get their own crops and
    masks)."""
    times, rest = divmod(want, count) if count else (0, 0)
    extra = rng.choice(count, rest, replace=False)  # drawn even when rest is 0
    drawn = np.concatenate([np.tile(np.arange(count), times), extra]).astype(np.int64)
    copy = np.concatenate([np.repeat(np.arange(times), count), np.full(rest, times)])
    return drawn, copy.astype(np.int64)


class BucketBatchSampler(Sampler[list[tuple[int, int, int]]]):
    """Batches of similar length whose padded size stays under ``max_tokens`` samples.

    Per epoch: sort by size (ties broken by a seeded shuffle), cut greedily so that
    ``len(batch) * max(size) <= max_tokens`` (fairseq ``max_tokens``), shuffle the batch order
    (training), then deal batch ``i`` to rank ``i % num_replicas``. When the batch count is not a
    multiple of the world size, the largest batches are split in two until it is, so every rank
    gets the same number of batches and each utterance is used exactly once per epoch.

    Several corpora (``corpora`` gives each item's) with ``weights``: each corpus is bucketed
    on its own, and corpus c contributes ``round(weights[c] / sum(weights) * B)`` of the
    epoch's B batches (B: the batches the corpora fill, each once), drawn from its own (every
    batch once per whole share, the remainder at random; an upsampled batch's copies are
    numbered so that their crops and masks differ). The number of batches per epoch stays
    fixed, and batches stay length-homogeneous; as each holds about ``max_tokens`` samples, a
    corpus's share of the batches is about its share of the epoch's audio. `corpus_shares`
    makes the weights from hours (natural, explicit or temperature).

    Yields lists of ``(index, epoch, copy)``, the keys `AudioDataset` takes.

    Args:
        sizes: (N,) samples per item (already capped at the crop size).
        max_tokens: sample budget per batch (BASE: 1.4M per GPU).
        max_batch_size: optional cap on items per batch.
        shuffle: reshuffle tie-breaks and batch order each epoch (training).
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        num_replicas, rank: the DDP world size and this process's rank.
        fixed_epoch: always use this epoch's batches (and crops): the same batches every
            epoch, for overfitting one batch.
        corpora: (N,) the corpus of each item; with ``weights``, one weight per corpus.
    """

    def __init__(
        self,
        sizes: np.ndarray,
        max_tokens: int,
        max_batch_size: int | None = None,
        shuffle: bool = True,
        seed: int = 1,
        num_replicas: int = 1,
        rank: int = 0,
        fixed_epoch: int | None = None,
        corpora: np.ndarray | None = None,
        weights: Sequence[float] | np.ndarray | None = None,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.corpora = None if corpora is None else np.asarray(corpora, dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        # every item's corpus has a weight (a corpus the checks left empty may have one too)
        if self.weights is not None and (
            self.corpora is None or self.corpora.max(initial=-1) >= len(self.weights)
        ):
            raise DataError("one sampling weight per corpus is needed")
        if len(self.sizes) < num_replicas:
            raise DataError(
                f"{len(self.sizes)} utterances cannot be shared by {num_replicas} processes"
            )
        if self.sizes.max(initial=0) > max_tokens:
            raise DataError(
                f"data.max_tokens={max_tokens} is smaller than one utterance "
                f"({self.sizes.max()} samples): raise it or lower data.max_sample_size"
            )
        self.max_tokens = max_tokens
        self.max_batch_size = max_batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.rank = rank
        self.fixed_epoch = fixed_epoch
        self.epoch = fixed_epoch or 0
        # on resume: batches of epoch `skip_epoch` already trained on (skipped once)
        self.skip = 0
        self.skip_epoch = 0
        self._cache: tuple[int, EpochPlan] | None = None
        # Lightning sets the epoch through `batch_sampler.sampler.set_epoch` each epoch
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.fixed_epoch is None else self.fixed_epoch

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every rank's batches of ``(index, copy)`` for ``epoch``, in dealing order (as
        Python lists: for tests and tools; iterating uses the arrays of `plan`)."""
        plan = self.plan(epoch)
        return [plan.batch(k) for k in range(len(plan))]

    def plan(self, epoch: int) -> EpochPlan:
        """Every rank's batches for ``epoch``, in dealing order, as arrays (cached)."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_plan(epoch))
        return self._cache[1]

    def _bucket(self, items: np.ndarray, tiebreak: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``items`` sorted by size (ties by ``tiebreak``), cut greedily to the budget: the
        order and (B + 1,) batch bounds in it."""
        n = len(self.sizes)
        key = self.sizes[items] * n + tiebreak[items]  # unique: one sort instead of a lexsort
        order = items[np.argsort(key)]
        return order, greedy_bounds(self.sizes[order], self.max_tokens, self.max_batch_size)

    def _make_plan(self, epoch: int) -> EpochPlan:
        rng = np.random.default_rng((self.seed, epoch))
        n = len(self.sizes)
        tiebreak = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.weights is None:
            order, bounds = self._bucket(np.arange(n), tiebreak)
            starts, ends = bounds[:-1], bounds[1:]
            copies = np.zeros(len(starts), dtype=np.int64)
        else:
            per = [
                self._bucket(np.flatnonzero(self.corpora == c), tiebreak)
                for c in range(len(self.weights))
            ]
            counts = np.array([len(b) - 1 for _, b in per])
            total = int(counts.sum())
            live = np.where(counts > 0, self.weights, 0.0)  # an empty corpus's share: the rest's
            share = live / live.sum()
            orders, starts, ends, copies, base = [], [], [], [], 0
            for c, (own, bounds) in enumerate(per):
                count = len(bounds) - 1
                drawn, copy = draw_by_share(count, int(round(share[c] * total)), rng)
                orders.append(own)
                starts.append(bounds[:-1][drawn] + base)
                ends.append(bounds[1:][drawn] + base)
                copies.append(copy)
                base += len(own)
            order = np.concatenate(orders)
            starts, ends, copies = (np.concatenate(x) for x in (starts, ends, copies))
        starts, ends, copies = _split_to_multiple(starts, ends, copies, self.num_replicas)
        if self.shuffle:
            perm = rng.permutation(len(starts))
            starts, ends, copies = starts[perm], ends[perm], copies[perm]
        return EpochPlan(order, starts, ends, copies)

    def resume(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` batches the next time ``epoch`` is iterated."""
        self.skip_epoch, self.skip = epoch, consumed

    def _skip_now(self) -> int:
        return self.skip if self.epoch == self.skip_epoch else 0

    def __iter__(self) -> Iterator[list[tuple[int, int, int]]]:
        plan = self.plan(self.epoch)
        skip = self._skip_now()
        if skip:
            self.skip = 0
        for k in range(self.rank + skip * self.num_replicas, len(plan), self.num_replicas):
            yield [(i, self.epoch, copy) for i, copy in plan.batch(k)]

    def __len__(self) -> int:
        """Batches of the whole epoch for this rank, also while resuming inside it: Lightning
        counts the batches already trained on as done and stops when this many are."""
        return len(self.plan(self.epoch)) // self.num_replicas


@dataclass(frozen=True)
class EpochPlan:
    """One epoch's batches as arrays: batch k is ``order[starts[k]:ends[k]]``, drawn as copy
    ``copies[k]`` (0 unless its corpus is upsampled)."""

    order: np.ndarray
    starts: np.ndarray
    ends: np.ndarray
    copies: np.ndarray

    def __len__(self) -> int:
        return len(self.starts)

    def batch(self, k: int) -> list[tuple[int, int]]:
        copy = int(self.copies[k])
        return [(i, copy) for i in self.order[self.starts[k] : self.ends[k]].tolist()]


def greedy_bounds(sizes: np.ndarray, max_tokens: int, max_batch: int | None) -> np.ndarray:
    """(B + 1,) bounds of the greedy cut of ascending ``sizes``: each batch takes items while
    ``count * size of the last <= max_tokens`` (and ``count <= max_batch``).

    The capacity ``max_tokens // size`` only falls along the sorted sizes, and over a stretch
    of equal capacity c every batch is c items: those are cut at once, so the loop runs once
    per distinct capacity, not once per batch.
    """
    n = len(sizes)
    cap = max_tokens // np.maximum(sizes, 1)
    if max_batch:
        cap = np.minimum(cap, max_batch)
    cap = np.maximum(cap, 1)
    change = np.flatnonzero(np.diff(cap)) + 1  # where a stretch of equal capacity ends
    bounds, start = [np.zeros(1, dtype=np.int64)], 0
    while start < n:
        c = int(cap[start])
        nxt = np.searchsorted(change, start, side="right")
        stretch_end = int(change[nxt]) if nxt < len(change) else n
        full = (stretch_end - start) // c
        if full:
            bounds.append(start + c * np.arange(1, full + 1, dtype=np.int64))
            start += c * full
            continue
        end = start + 1  # a batch across stretches: item by item, as the greedy rule says
        while end < n and end - start + 1 <= cap[end]:
            end += 1
        bounds.append(np.array([end], dtype=np.int64))
        start = end
    return np.concatenate(bounds)


def _split_to_multiple(
    starts: np.ndarray, ends: np.ndarray, copies: np.ndarray, replicas: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split the largest batch in two (first the earliest of the largest) until the count is
    a multiple of ``replicas``: every rank the same number of batches."""
    while len(starts) % replicas:
        big = int(np.argmax(ends - starts))
        mid = starts[big] + (ends[big] - starts[big]) // 2
        starts = np.insert(starts, big + 1, mid)
        ends = np.insert(ends, big, mid)
        copies = np.insert(copies, big, copies[big])
    return (np.asarray(x, dtype=np.int64) for x in (starts, ends, copies))


class _EpochHook:
    """What Lightning finds as ``batch_sampler.sampler``: forwards ``set_epoch`` to the owner.

    Lightning sets each epoch on the objects at ``dataloader.sampler`` and
    ``dataloader.batch_sampler.sampler`` that have ``set_epoch`` (``_set_sampler_epoch``,
    lightning_fabric/utilities/data.py), not on the batch sampler itself."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
