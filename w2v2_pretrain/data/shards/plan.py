"""The batch plan over shards: length-bucketed batches that read each shard as a stream, dealt
to the loader workers of every rank."""

from __future__ import annotations

import numpy as np

from w2v2_pretrain.data.sampler import BucketBatchSampler, EpochPlan, draw_by_share, greedy_bounds
from w2v2_pretrain.data.shards.index import ShardSplit
from w2v2_pretrain.errors import DataError


class ShardBatchSampler(BucketBatchSampler):
    """Length-bucketed batches under ``max_tokens`` that read the shards as streams.

    Per epoch: the shards are shuffled (training) and dealt to the ``num_replicas x workers``
    streams (each rank's loader workers), balanced by utterances. Each shard is cut greedily in
    member order (sorted by length when written: the same budget rule as
    `BucketBatchSampler`), so a batch is a run of consecutive members and a stream reads its
    shards front to back. Streams are evened out by splitting their largest batches, so every
    rank has the same number of batches, and rank ``r``'s batch ``k`` comes from its stream
    ``k % workers`` (the loader hands batch ``k`` to worker ``k % workers``). Corpus weights
    draw each corpus's shards as often as its share asks (a shard drawn twice numbers its
    copies: their crops and masks differ). Resume, epochs and ``fixed_epoch`` are
    `BucketBatchSampler`'s: the plan is a function of (seed, epoch, world, workers).

    Args (beyond `BucketBatchSampler`'s):
        shard_bounds: (S + 1,) where each shard's utterances start (corpora one after another).
        shard_corpus: (S,) the corpus of each shard.
        workers: loader workers per rank (0 counts as 1).
    """

    def __init__(
        self,
        sizes: np.ndarray,
        max_tokens: int,
        shard_bounds: np.ndarray,
        shard_corpus: np.ndarray,
        workers: int = 1,
        **kw,
    ) -> None:
        self.shard_bounds = np.asarray(shard_bounds, dtype=np.int64)
        self.shard_corpus = np.asarray(shard_corpus, dtype=np.int64)
        self.workers = max(1, workers)
        corpora = np.repeat(self.shard_corpus, np.diff(self.shard_bounds))
        super().__init__(sizes, max_tokens, corpora=corpora, **kw)

    def _draws(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The shards of this epoch and each draw's copy number, in reading order."""
        shards = np.arange(len(self.shard_corpus))
        if self.weights is None:
            draws, copies = shards, np.zeros(len(shards), dtype=np.int64)
        else:
            share = self.weights / self.weights.sum()
            draws, copies = [], []
            for c in range(len(self.weights)):
                own = shards[self.shard_corpus == c]
                drawn, copy = draw_by_share(len(own), int(round(share[c] * len(shards))), rng)
                draws.append(own[drawn])
                copies.append(copy)
            draws, copies = np.concatenate(draws), np.concatenate(copies)
        if self.shuffle:
            perm = rng.permutation(len(draws))
            draws, copies = draws[perm], copies[perm]
        return draws, copies

    def _make_plan(self, epoch: int) -> EpochPlan:
        rng = np.random.default_rng((self.seed, epoch))
        draws, copies = self._draws(rng)
        cuts, order, base = [], [], 0  # per draw: its batches as (start, end, copy) in order
        for shard, copy in zip(draws.tolist(), copies.tolist(), strict=True):
            lo, hi = int(self.shard_bounds[shard]), int(self.shard_bounds[shard + 1])
            if hi == lo:
                continue
            bounds = greedy_bounds(self.sizes[lo:hi], self.max_tokens, self.max_batch_size)
            cuts.append(
                [(base + a, base + b, copy) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            )
            order.append(np.arange(lo, hi))
            base += hi - lo
        total = sum(len(c) for c in cuts)
        if total < self.num_replicas:
            raise DataError(
                f"{base} utterances make {total} batches, fewer than the {self.num_replicas} "
                "processes of this run"
            )
        # a split of few batches (validation) is read by fewer streams than there are workers
        workers = min(self.workers, total // self.num_replicas)
        streams = _whole_shards(cuts, self.num_replicas * workers)
        if not _even_out(streams, drop=False):
            streams = _runs(cuts, self.num_replicas * workers)
            _even_out(streams, drop=True)
        count = len(streams[0])
        # rank r's batch k is stream r * workers + k % workers, its batch k // workers; the
        # plan deals batch j to rank j % num_replicas
        starts = np.zeros(count * len(streams), dtype=np.int64)
        ends, cps = np.zeros_like(starts), np.zeros_like(starts)
        for r in range(self.num_replicas):
            for w in range(workers):
                for i, (a, b, copy) in enumerate(streams[r * workers + w]):
                    j = (i * workers + w) * self.num_replicas + r
                    starts[j], ends[j], cps[j] = a, b, copy
        order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        return EpochPlan(order, starts, ends, cps)


WorkerBatches = list[tuple[int, int, int]]
"""A loader stream's batches in reading order: (start, end, copy) in the epoch's order."""


def _whole_shards(cuts: list[WorkerBatches], n: int) -> list[WorkerBatches]:
    """Each shard's batches to the stream with the fewest utterances so far: every shard is
    read by one stream."""
    streams: list[WorkerBatches] = [[] for _ in range(n)]
    load = np.zeros(n, dtype=np.int64)
    for batches in cuts:
        s = int(np.argmin(load))
        load[s] += batches[-1][1] - batches[0][0]
        streams[s] += batches
    return streams


def _runs(cuts: list[WorkerBatches], n: int) -> list[WorkerBatches]:
    """The epoch's batches cut into ``n`` runs of (nearly) as many batches: a shard at the
    end of one run and the start of the next is read by both streams, each its part (few
    shards, or shards of very different sizes)."""
    flat = [b for batches in cuts for b in batches]
    bounds = np.linspace(0, len(flat), n + 1).astype(int).tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _even_out(streams: list[WorkerBatches], drop: bool) -> bool:
    """Split the largest batches of the shorter streams (a split batch stays a run of
    members) until every stream has as many as the longest. Where a stream cannot (its
    batches are single utterances): False, or with ``drop`` every stream is cut to the
    shortest (a batch or so an epoch). True when all are even without dropping."""
    longest = max(len(s) for s in streams)
    for s in streams:
        while 0 < len(s) < longest:
            big = max(range(len(s)), key=lambda k: s[k][1] - s[k][0])
            a, b, copy = s[big]
            if b - a < 2:
                break
            mid = a + (b - a) // 2
            s[big : big + 1] = [(a, mid, copy), (mid, b, copy)]
    even = all(len(s) == longest for s in streams)
    if drop:
        count = min(len(s) for s in streams)
        for s in streams:
            del s[count:]
    return even


def shard_sizes_in_order(splits: list[ShardSplit]) -> tuple[np.ndarray, np.ndarray]:
    """(S + 1,) the shards' bounds and (S,) their corpus, for corpora numbered one after
    another (as `ShardDataset` numbers them)."""
    bounds, corpus, base = [np.zeros(1, dtype=np.int64)], [], 0
    for c, split in enumerate(splits):
        b = split.bounds()
        bounds.append(b[1:] + base)
        corpus.append(np.full(len(split.shards), c, dtype=np.int64))
        base += len(split)
    return np.concatenate(bounds), np.concatenate(corpus)
