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

    Yields lists of ``(index, epoch)``, the keys `AudioDataset` takes.

    Args:
        sizes: (N,) samples per item (already capped at the crop size).
        max_tokens: sample budget per batch (BASE: 1.4M per GPU).
        max_batch_size: optional cap on items per batch.
        shuffle: reshuffle tie-breaks and batch order each epoch (training).
        seed: base seed; epoch ``e`` uses ``(seed, e)``.
        num_replicas, rank: the DDP world size and this process's rank.
        fixed_epoch: always use this epoch's batches (and crops): the same batches every
            epoch, for overfitting one batch.
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
    ) -> None:
        self.sizes = np.asarray(sizes, dtype=np.int64)
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
        self._cache: tuple[int, list[list[int]]] | None = None
        # Lightning sets the epoch through `batch_sampler.sampler.set_epoch` each epoch
        self.sampler = _EpochHook(self)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch if self.fixed_epoch is None else self.fixed_epoch

    def batches(self, epoch: int) -> list[list[int]]:
        """Every rank's batches for ``epoch``, in dealing order."""
        if self._cache is None or self._cache[0] != epoch:
            self._cache = (epoch, self._make_batches(epoch))
        return self._cache[1]

    def _make_batches(self, epoch: int) -> list[list[int]]:
        rng = np.random.default_rng((self.seed, epoch))
        tiebreak = rng.permutation(len(self.sizes)) if self.shuffle else np.arange(len(self.sizes))
        order = np.lexsort((tiebreak, self.sizes))
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
            yield [(i, self.epoch) for i in batch]

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
