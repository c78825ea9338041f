"""Length-bucketed batches under a budget of samples, sharded across DDP ranks."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler

from w2v2_pretrain.errors import DataError


class BucketBatchSampler(Sampler[list[tuple[int, int]]]):
    """Batches of similar length whose padded size stays under ``max_tokens`` samples.

    Per epoch: sort by size (ties broken by a seeded shuffle), cut greedily so that
    ``len(batch) * max(size) <= max_tokens`` (fairseq ``max_tokens``), shuffle the batch order
    (training), then deal batch ``i`` to rank ``i % num_replicas``. When the batch count is not a
    multiple of the world size, the largest batches are split in two until it is, so every rank
    gets the same number of batches and each utterance is used exactly once per epoch.

    Several corpora (``corpora`` gives each item's) with ``weights``: each corpus is bucketed
    on its own, and corpus c contributes ``weights[c] / sum(weights)`` of the epoch's batches,
    drawn from its own (every batch once per whole share, the remainder at random; an
    upsampled batch's copies are numbered so that their crops and masks differ). The number of
    batches per epoch stays fixed, and batches stay length-homogeneous.

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
        weights: list[float] | None = None,
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
        self.corpora = None if corpora is None else np.asarray(corpora, dtype=np.int64)
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (
            self.corpora is None or len(self.weights) != self.corpora.max(initial=-1) + 1
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
        self._cache: tuple[int, list[list[tuple[int, int]]]] | None = None
        # Lightning sets the epoch through `batch_sampler.sampler.set_epoch` each epoch
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.fixed_epoch is None else self.fixed_epoch

    def batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        """Every rank's batches of ``(index, copy)`` for ``epoch``, in dealing order."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_batches(epoch))
        return self._cache[1]

    def _bucket(self, items: np.ndarray, tiebreak: np.ndarray) -> list[list[int]]:
        """``items`` sorted by size (ties by ``tiebreak``), cut greedily to the budget."""
        order = items[np.lexsort((tiebreak[items], self.sizes[items]))]
        batches, start = [], 0
        while start < len(order):
            end = start + 1
            while end < len(order):
                n = end - start + 1
                if n * self.sizes[order[end]] > self.max_tokens:
                    break
                if self.max_batch_size and n > self.max_batch_size:
                    break
                end += 1
            batches.append(order[start:end].tolist())
            start = end
        return batches

    def _make_batches(self, epoch: int) -> list[list[tuple[int, int]]]:
        rng = np.random.default_rng((self.seed, epoch))
        n = len(self.sizes)
        tiebreak = rng.permutation(n) if self.shuffle else np.arange(n)
        if self.weights is None:
            batches = [[(i, 0) for i in b] for b in self._bucket(np.arange(n), tiebreak)]
        else:
            per = [
                self._bucket(np.flatnonzero(self.corpora == c), tiebreak)
                for c in range(len(self.weights))
            ]
            total = sum(len(b) for b in per)
            share = self.weights / self.weights.sum()
            batches = []
            for c, own in enumerate(per):
                want = int(round(share[c] * total))
                copies, rest = divmod(want, len(own)) if own else (0, 0)
                drawn = [(b, k) for k in range(copies) for b in range(len(own))]
                drawn += [(int(b), copies) for b in rng.choice(len(own), rest, replace=False)]
                batches += [[(i, k) for i in own[b]] for b, k in drawn]
        while len(batches) % self.num_replicas:
            big = max(range(len(batches)), key=lambda i: len(batches[i]))
            b = batches.pop(big)
            batches[big:big] = [b[: len(b) // 2], b[len(b) // 2 :]]
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def resume(self, epoch: int, consumed: int) -> None:
        """Skip the first ``consumed`` batches the next time ``epoch`` is iterated."""
        self.skip_epoch, self.skip = epoch, consumed

    def _skip_now(self) -> int:
        return self.skip if self.epoch == self.skip_epoch else 0

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        mine = self.batches(self.epoch)[self.rank :: self.num_replicas]
        skip = self._skip_now()
        if skip:
            self.skip = 0
        for batch in mine[skip:]:
            yield [(i, self.epoch, copy) for i, copy in batch]

    def __len__(self) -> int:
        """Batches of the whole epoch for this rank, also while resuming inside it: Lightning
        counts the batches already trained on as done and stops when this many are."""
        return len(self.batches(self.epoch)) // self.num_replicas


class _EpochHook:
    """What Lightning finds as ``batch_sampler.sampler``: forwards ``set_epoch`` to the owner."""

    def __init__(self, owner: BucketBatchSampler) -> None:
        self.owner = owner

    def set_epoch(self, epoch: int) -> None:
        self.owner.set_epoch(epoch)
