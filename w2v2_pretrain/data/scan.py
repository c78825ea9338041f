"""What the files of a manifest hold, checked once: that each exists (one ``os.stat``), its
header (``data.verify=header``) or every sample (``decode``).

What the files hold is kept as columns (`Scan`), independent of the run's settings; the set-up
check (verify.py) applies those settings to the columns at once, and the verify record
(record.py) keeps a scan for later runs. Headers are read in parallel threads, each thread
taking a chunk of entries (one task per entry costs more than a header read).
"""

from __future__ import annotations

import mmap
import os
import stat
from dataclasses import dataclass, field

import numpy as np

from w2v2_pretrain.data.audio import AudioProblem, inspect_audio
from w2v2_pretrain.data.config import VerifyLevel
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.parallel import in_threads

_SCAN_CHUNK = 512  # entries per thread task


@dataclass
class Scan:
    """What a check found in each file, independent of the run's settings.

    Shape (N entries):
        frames, sample_rates, channels: (N,) from the header (-1, 0, 0 where none was read).
        problems: entry index -> why its file cannot be used at all (missing, unreadable, ...).
    """

    level: VerifyLevel
    frames: np.ndarray
    sample_rates: np.ndarray
    channels: np.ndarray
    problems: dict[int, AudioProblem] = field(default_factory=dict)
    file_sizes: np.ndarray | None = None
    """(N,) each file's size in bytes when it was checked (-1: missing)."""
    file_mtimes: np.ndarray | None = None
    """(N,) each file's modification time (ns) when it was checked."""

    @classmethod
    def empty(cls, level: VerifyLevel, n: int) -> Scan:
        return cls(
            level,
            np.full(n, -1, dtype=np.int64),
            np.zeros(n, dtype=np.int32),
            np.zeros(n, dtype=np.int16),
            file_sizes=np.full(n, -1, dtype=np.int64),
            file_mtimes=np.zeros(n, dtype=np.int64),
        )


MISSING, REGULAR, OTHER = 0, 1, 2
"""`FileStats.kinds`: no such file, a regular file, something else (a folder, a device)."""

_FORK_FROM = 100_000  # entries: fewer are stat'ed in this process (a fork costs more)


@dataclass
class FileStats:
    """One ``os.stat`` of each entry's file.

    Shape (N entries):
        sizes: (N,) int64 bytes (-1: missing).
        mtimes: (N,) int64 modification time in ns (0: missing).
        kinds: (N,) int8 `MISSING`, `REGULAR` or `OTHER`.
    """

    sizes: np.ndarray
    mtimes: np.ndarray
    kinds: np.ndarray


_STAT_BLOCK = 1 << 16  # entries per block: the Python objects of one block are reused


def _stat_rows(manifest: Manifest, lo: int, hi: int, out: np.ndarray) -> None:
    """Stat entries ``lo:hi`` into ``out`` ((hi - lo, 3) int64: size, mtime, kind).

    The paths are joined as bytes (root, "/", the manifest's bytes), not as `Path` objects:
    the syscall is then most of the ~1.7 us an entry costs. Entries go in blocks, so the
    transient Python objects stay a few MB at any size (memory that is not touched anew)."""
    data = memoryview(manifest.path_data)  # sliced without copying the buffer
    prefixes = [os.fsencode(root) + b"/" for root in manifest.roots]
    st, regular = os.stat, stat.S_ISREG
    for a in range(lo, hi, _STAT_BLOCK):
        b = min(hi, a + _STAT_BLOCK)
        rows: list[int] = []
        put = rows.extend
        for c, s, e in zip(
            manifest.corpus[a:b].tolist(),
            manifest.path_starts[a:b].tolist(),
            manifest.path_ends[a:b].tolist(),
            strict=True,
        ):
            rel = data[s:e]
            try:
                r = st(bytes(rel) if rel[:1] == b"/" else prefixes[c] + rel)
            except (OSError, ValueError):  # ValueError: a NUL byte in the path
                put((-1, 0, MISSING))
                continue
            put((r.st_size, r.st_mtime_ns, REGULAR if regular(r.st_mode) else OTHER))
        out[a - lo : b - lo] = np.array(rows, dtype=np.int64).reshape(b - a, 3)


def stat_files(manifest: Manifest, indices: np.ndarray | None = None) -> FileStats:
    """Stat the files of ``indices`` (default: every entry; the result is indexed alike).

    The loop is bound by the interpreter (threads would queue on its lock), so a large
    manifest is split across forked processes, one per usable core, writing into shared
    memory: 10M entries in ~10 s on 2 cores. A child that fails has its part done here."""
    sub = manifest if indices is None else manifest.select(np.asarray(indices, dtype=np.int64))
    n = len(sub)
    procs = min(len(os.sched_getaffinity(0)), 16, max(1, n // _FORK_FROM))
    shared = mmap.mmap(-1, max(1, n * 24))
    rows = np.frombuffer(shared, dtype=np.int64, count=n * 3).reshape(n, 3)
    bounds = np.linspace(0, n, procs + 1).astype(int).tolist()
    children = {}
    for k in range(1, procs):
        pid = os.fork()
        if pid == 0:  # pragma: no cover (a child process)
            code = 1
            try:
                _stat_rows(sub, bounds[k], bounds[k + 1], rows[bounds[k] : bounds[k + 1]])
                code = 0
            finally:
                os._exit(code)
        children[pid] = k
    _stat_rows(sub, bounds[0], bounds[1], rows[bounds[0] : bounds[1]])
    for pid, k in children.items():
        if os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) != 0:
            _stat_rows(sub, bounds[k], bounds[k + 1], rows[bounds[k] : bounds[k + 1]])
    out = FileStats(rows[:, 0].copy(), rows[:, 1].copy(), rows[:, 2].astype(np.int8))
    del rows
    shared.close()
    return out


def scan_files(
    manifest: Manifest,
    verify: VerifyLevel,
    workers: int = 8,
    progress: str | None = None,
    indices: np.ndarray | None = None,
    base: Scan | None = None,
) -> Scan:
    """Check the files of ``indices`` (default: every entry): one `stat_files` pass, then
    (``header``, ``decode``) each regular file read in parallel threads, a chunk of entries
    per task, with a progress bar (and its ETA) titled ``progress``. With ``base``, its
    entries at ``indices`` are checked again (in place)."""
    n = len(manifest)
    scan = Scan.empty(verify, n) if base is None else base
    todo = np.arange(n) if indices is None else np.asarray(indices, dtype=np.int64)
    found = stat_files(manifest, todo)
    scan.file_sizes[todo], scan.file_mtimes[todo] = found.sizes, found.mtimes
    scan.frames[todo], scan.sample_rates[todo], scan.channels[todo] = -1, 0, 0
    for i in todo.tolist():
        scan.problems.pop(i, None)
    for i in todo[found.kinds == MISSING].tolist():
        scan.problems[i] = AudioProblem("missing", "file not found")
    for i in todo[found.kinds == OTHER].tolist():
        scan.problems[i] = AudioProblem("not a file", "not a regular file")
    if verify == VerifyLevel.none:
        return scan
    readable = todo[found.kinds == REGULAR]
    chunks = [readable[i : i + _SCAN_CHUNK] for i in range(0, len(readable), _SCAN_CHUNK)]
    decode = verify == VerifyLevel.decode

    def run(chunk: np.ndarray) -> None:
        for i in chunk.tolist():  # regular files: stat'ed above
            found = inspect_audio(manifest.audio_path(i), decode=decode)
            if isinstance(found, AudioProblem):
                scan.problems[i] = found
            else:
                scan.frames[i] = found.frames
                scan.sample_rates[i] = found.sample_rate
                scan.channels[i] = found.channels

    in_threads(run, chunks, workers, progress, unit="file", size=len)
    return scan
