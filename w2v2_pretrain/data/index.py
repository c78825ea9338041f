"""The manifest as columns: one byte buffer of paths with offsets, and int arrays.

A corpus of 10 million utterances held as Python objects (a `str`, an `int` and a dataclass
per line) costs ~2 KB and ~100 us per utterance in every process, and a forked loader worker
copies that object graph page by page as it touches the reference counts. Here a manifest is
a handful of numpy arrays: ~40 bytes per utterance plus its manifest line, and a worker
reading it never writes to those pages. The path buffer is the manifest file's own bytes
(read once, not copied): entry i's path is ``path_data[path_starts[i]:path_ends[i]]``.
tsv.py parses a manifest file into one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


def frozen(a: np.ndarray) -> np.ndarray:
    """``a``, made read-only (a loader worker only reads the columns)."""
    a.setflags(write=False)
    return a


@dataclass(frozen=True, eq=False)
class Manifest:
    """Parsed manifests: each one's file and absolute audio root, and the entries as columns.

    One manifest file in the usual case; `concat` joins several (corpora with roots of their
    own), each entry remembering its ``corpus``.

    Shape (N entries, P bytes):
        path_data: (P,) uint8, the UTF-8 paths as the manifest file holds them.
        path_starts, path_ends: (N,) int64, entry i's path is ``path_data[start:end]``.
        num_samples: (N,) int64, length at the file's own rate (the manifest's column).
        lines: (N,) int32, the manifest line of each entry (the root is line 1).
        corpus: (N,) int16, which of ``sources`` each entry came from.
        sample_rates: (N,) int32, each file's rate once a header was read (0: not known).
        outside: (N,) bool, the path leads out of the root lexically (fairseq writes
            ``../``-prefixed lines for a corpus assembled from links).
    """

    sources: tuple[Path, ...]
    roots: tuple[Path, ...]
    path_data: np.ndarray
    path_starts: np.ndarray
    path_ends: np.ndarray
    num_samples: np.ndarray
    lines: np.ndarray
    corpus: np.ndarray
    sample_rates: np.ndarray
    outside: np.ndarray

    @property
    def source(self) -> Path:
        """The (first) manifest file."""
        return self.sources[0]

    @property
    def root(self) -> Path:
        """The (first) manifest's audio root."""
        return self.roots[0]

    @property
    def name(self) -> str:
        return ", ".join(str(s) for s in self.sources)

    def __len__(self) -> int:
        return len(self.num_samples)

    def path(self, i: int) -> str:
        """Entry ``i``'s path as the manifest writes it (relative to its root)."""
        raw = self.path_data[self.path_starts[i] : self.path_ends[i]].tobytes()
        return raw.decode("utf-8", "surrogateescape")

    def audio_path(self, i: int) -> Path:
        """Where entry ``i``'s file is: its root joined with its path, links not resolved."""
        return self.roots[self.corpus[i]] / self.path(i)

    def where(self, i: int) -> str:
        """``manifest:line (path)``: how errors name an entry."""
        c = int(self.corpus[i])
        return f"{self.sources[c]}:{int(self.lines[i])} ({self.roots[c] / self.path(i)})"

    def corpora(self) -> np.ndarray:
        """(N,) the corpus of each entry."""
        return self.corpus

    def samples_at(self, rate: int) -> np.ndarray:
        """(N,) int64 lengths at ``rate`` (after resampling; as is where the rate is unknown)."""
        own = self.sample_rates.astype(np.int64)
        known = (own > 0) & (own != rate)
        out = self.num_samples.copy()
        out[known] = self.num_samples[known] * rate // own[known]
        return out

    def _columns(self) -> tuple[np.ndarray, ...]:
        return (
            self.path_starts,
            self.path_ends,
            self.num_samples,
            self.lines,
            self.corpus,
            self.sample_rates,
            self.outside,
        )

    def _with(self, columns) -> Manifest:
        return Manifest(self.sources, self.roots, self.path_data, *map(frozen, columns))

    def select(self, keep) -> Manifest:
        """The entries at the indices ``keep``, as a new manifest (sharing the path buffer)."""
        keep = np.asarray(keep, dtype=np.int64)
        if len(keep) == len(self) and (keep == np.arange(len(self))).all():
            return self
        return self._with(c[keep] for c in self._columns())

    def with_rates(self, rates: np.ndarray) -> Manifest:
        """The same entries with each file's sample rate recorded ((N,), 0: unknown)."""
        rates = np.asarray(rates, dtype=np.int32).copy()
        if rates.shape != self.num_samples.shape:
            raise ValueError(f"{len(rates)} rates for {len(self)} entries")
        columns = list(self._columns())
        columns[5] = rates
        return self._with(columns)

    @staticmethod
    def concat(parts: list[Manifest]) -> Manifest:
        """One manifest of several, each part's entries tagged with its corpus number."""
        sources, roots, shifted, base = [], [], [], 0
        for part in parts:
            cols = list(part._columns())
            cols[0], cols[1] = cols[0] + base, cols[1] + base
            cols[4] = (cols[4] + len(sources)).astype(np.int16)
            shifted.append(cols)
            base += len(part.path_data)
            sources += part.sources
            roots += part.roots
        return Manifest(
            tuple(sources),
            tuple(roots),
            frozen(np.concatenate([p.path_data for p in parts])),
            *(frozen(np.concatenate(c)) for c in zip(*shifted, strict=True)),
        )

    @property
    def nbytes(self) -> int:
        """Bytes the columns and the path buffer hold."""
        return self.path_data.nbytes + sum(a.nbytes for a in self._columns())
