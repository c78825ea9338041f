"""Inspecting or writing many files at once: one function for every such pass (a manifest's
headers, the set-up check, the shard writer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

T = TypeVar("T")
R = TypeVar("R")


def in_threads(
    fn: Callable[[T], R],
    items: Sequence[T],
    workers: int,
    progress: str | None = None,
    unit: str = "file",
    size: Callable[[T], int] | None = None,
) -> list[R]:
    """``fn(item)`` of every item, in ``workers`` threads; the results in the items' order.

    Decoding and reading release the interpreter's lock (libsndfile, file I/O), so threads
    share the cores without copying the inputs to processes. ``progress``: the title of a
    progress bar (with its ETA) that advances by ``size(item)`` (default 1) ``unit``s per item
    done; None: no bar.
    """
    with ThreadPoolExecutor(max(1, workers)) as pool:
        results = pool.map(fn, items)
        if not progress or not len(items):
            return list(results)
        from tqdm import tqdm

        total = sum(map(size, items)) if size else len(items)
        out = []
        with tqdm(total=total, desc=progress, unit=unit) as bar:
            for item, result in zip(items, results, strict=True):
                out.append(result)
                bar.update(size(item) if size else 1)
        return out
