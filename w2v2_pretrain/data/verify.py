"""The set-up check of a manifest: which entries are usable, and why the others are not.

Every entry's file is checked to exist (``data.verify=none``), its header read (``header``)
or every sample decoded (``decode``), in parallel threads, each thread taking a chunk of
entries (one task per entry costs more than a header read). What the files hold is kept as
columns (`Scan`); the run's settings (rate, channels, lengths) are applied to those columns
at once, and only the entries that fail are turned into messages.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.choice import Choice
from w2v2_pretrain.data.audio import AudioInfo, AudioProblem, format_problem, inspect_audio
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.logs import run_logger

log = run_logger(__name__)  # every rank checks the same manifest: said once

_SCAN_CHUNK = 512  # entries per thread task


class BadFilePolicy(Choice):
    """What a file that cannot be used does to the run (``data.on_bad_file``)."""

    error = "error"
    """Stop, naming the file (in training: with a checkpoint to resume from)."""
    skip = "skip"
    """Drop it, name it in the log and in ``bad_files.tsv``, count it, go on."""


class VerifyLevel(Choice):
    """How closely the setup checks every manifest entry (``data.verify``)."""

    none = "none"
    """Only that each file exists."""
    header = "header"
    """Read every header: unreadable, empty and wrong-length files (true means this)."""
    decode = "decode"
    """Decode every file in full: also truncated FLACs, NaN/Inf and all-zero audio."""

    @classmethod
    def parse(cls, value, field: str) -> VerifyLevel:
        if isinstance(value, bool):
            return cls.header if value else cls.none
        return super().parse(value, field)

    @property
    def rank(self) -> int:
        """0 none, 1 header, 2 decode: a scan at a higher rank answers a lower one."""
        return ("none", "header", "decode").index(self.value)


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


def _check_file(path: str, verify: VerifyLevel) -> AudioInfo | AudioProblem:
    """What is wrong with one regular file (`scan_files` has stat'ed it), else what its header
    says: a header read (``header``) or a full decode (``decode``)."""
    return inspect_audio(path, decode=verify == VerifyLevel.decode)


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

    def run(chunk: np.ndarray) -> int:
        for i in chunk.tolist():
            found = _check_file(str(manifest.audio_path(i)), verify)
            if isinstance(found, AudioProblem):
                scan.problems[i] = found
            else:
                scan.frames[i] = found.frames
                scan.sample_rates[i] = found.sample_rate
                scan.channels[i] = found.channels
        return len(chunk)

    with ThreadPoolExecutor(max(1, workers)) as pool:
        done = pool.map(run, chunks)
        if progress and len(readable):
            from tqdm import tqdm

            with tqdm(total=len(readable), desc=progress, unit="file") as bar:
                for count in done:
                    bar.update(count)
        else:
            list(done)
    return scan


def _format_problems(
    manifest: Manifest, scan: Scan, sample_rate: int, resample: bool, downmix: bool
) -> dict[int, AudioProblem]:
    """Entries whose header disagrees with the manifest or the run's settings (`format_problem`
    on the columns at once; only the failures become messages)."""
    known = scan.frames >= 0
    bad = known & (scan.frames != manifest.num_samples)  # also catches 0 frames
    if not downmix:
        bad |= known & (scan.channels > 1)
    if not resample:
        bad |= known & (scan.sample_rates != sample_rate)
    out = {}
    for i in np.flatnonzero(bad).tolist():
        info = AudioInfo(int(scan.frames[i]), int(scan.sample_rates[i]), int(scan.channels[i]))
        expected = int(manifest.num_samples[i])
        problem = format_problem(info, sample_rate, resample, downmix, expected)
        if problem is not None:
            out[i] = problem
    return out


def _too_short(length: int, sample_rate: int, receptive_field: int) -> AudioProblem:
    """A clip the feature encoder cannot make one frame of."""
    return AudioProblem(
        "too short",
        f"{length} samples at {sample_rate} Hz, shorter than the feature encoder's receptive "
        f"field ({receptive_field} samples)",
    )


@dataclass
class _Triage:
    """Where `check_manifest` puts the entries: dropped (counted by reason) or, being a bad
    file skipped under ``on_bad_file=skip``, also named (``where: reason``)."""

    dropped: Counter = field(default_factory=Counter)
    skipped: list[str] = field(default_factory=list)

    def bad_file(self, where: str, problem: AudioProblem, on_bad_file: BadFilePolicy) -> None:
        if on_bad_file == BadFilePolicy.error:
            raise DataError(f"{where}: {problem.detail} (data.on_bad_file=skip skips bad files)")
        log.warning("skipping %s: %s", where, problem.detail)
        self.skipped.append(f"{where}: {problem.detail}")
        self.dropped[problem.kind] += 1

    def summarise(self, manifest: Manifest, kept: int) -> None:
        """Stop if nothing is left of a manifest that had entries; else log what was dropped."""
        if not kept and len(manifest):
            raise DataError(f"{manifest.name}: no usable entries (dropped {dict(self.dropped)})")
        if self.dropped:
            log.warning(
                "%s: kept %d of %d entries; dropped %s",
                manifest.name,
                kept,
                len(manifest),
                dict(self.dropped),
            )


def check_manifest(
    manifest: Manifest,
    min_sample_size: int,
    receptive_field: int,
    verify: VerifyLevel | bool | str = VerifyLevel.header,
    on_bad_file: BadFilePolicy | str = BadFilePolicy.error,
    workers: int = 8,
    progress: bool = False,
    sample_rate: int = 16_000,
    resample: bool = True,
    downmix: bool = True,
    scan: Scan | None = None,
) -> tuple[Manifest, Counter, list[str]]:
    """Return the usable entries, a count of what was dropped by reason, and the bad files
    skipped (``where: reason``).

    Clips shorter than ``min_sample_size`` are dropped and counted. Files that are missing,
    unreadable, empty, of the wrong length (``verify=header`` reads every header), that fail to
    decode or hold NaN/Inf or only zeros (``verify=decode``), or that are shorter than the
    feature encoder's receptive field are bad files: a `DataError` naming the first one, or with
    ``on_bad_file=skip`` dropped, counted and logged. Files are checked in parallel threads
    (or ``scan`` says what a check found before). Lengths are compared at ``sample_rate`` (the
    rate the model sees): a header pass records each file's own rate, so an 8 kHz file counts
    its samples after resampling; without ``resample`` (or ``downmix``) another rate (or
    several channels) is a bad file.
    """
    verify = VerifyLevel.parse(verify, "data.verify")
    on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
    if scan is None:
        scan = scan_files(manifest, verify, workers, f"{verify} check" if progress else None)
    manifest = manifest.with_rates(scan.sample_rates)
    problems = _format_problems(manifest, scan, sample_rate, resample, downmix) | scan.problems
    lengths = manifest.samples_at(sample_rate)
    short = np.flatnonzero(lengths < receptive_field).tolist()
    for i in short:
        problems.setdefault(i, _too_short(int(lengths[i]), sample_rate, receptive_field))
    triage = _Triage()
    for i in sorted(problems):
        triage.bad_file(manifest.where(i), problems[i], on_bad_file)
    is_bad = np.zeros(len(manifest), dtype=bool)
    is_bad[np.fromiter(problems, dtype=np.int64, count=len(problems))] = True
    keep = lengths >= min_sample_size
    too_small = int(np.count_nonzero(~keep & ~is_bad))
    keep &= ~is_bad
    if too_small:
        triage.dropped[f"shorter than min_sample_size={min_sample_size}"] += too_small
    kept = np.flatnonzero(keep)
    triage.summarise(manifest, len(kept))
    return manifest.select(kept), triage.dropped, triage.skipped


# --- the verify record -----------------------------------------------------------------------

RECORD_VERSION = 1


def record_path(source: Path) -> Path:
    """Where the verify record of manifest ``source`` is kept: beside it."""
    return source.with_name(source.name + ".verified.npz")


def _manifest_key(source: Path) -> np.ndarray:
    st = source.stat()
    return np.array([RECORD_VERSION, st.st_size, st.st_mtime_ns], dtype=np.int64)


def save_record(source: Path, scan: Scan, folder: Path | None = None) -> Path | None:
    """Write the scan of manifest ``source`` beside it (or, where that folder cannot be
    written, into ``folder``); the path written, or None."""
    problems = sorted(scan.problems.items())
    arrays = {
        "key": _manifest_key(source),
        "level": np.array([scan.level.rank]),
        "frames": scan.frames,
        "sample_rates": scan.sample_rates,
        "channels": scan.channels,
        "file_sizes": scan.file_sizes,
        "file_mtimes": scan.file_mtimes,
        "problem_index": np.array([i for i, _ in problems], dtype=np.int64),
        "problem_json": np.array(json.dumps([[p.kind, p.detail] for _, p in problems])),
    }
    for target in (record_path(source), folder and folder / record_path(source).name):
        if target is None:
            continue
        try:
            with atomic_open(target, "wb") as f:
                np.savez(f, **arrays)
            return target
        except OSError as e:
            log.warning("cannot write the verify record %s (%s)", target, e.strerror or e)
    return None


def load_record(
    source: Path, level: VerifyLevel, n: int, folder: Path | None = None
) -> Scan | None:
    """The recorded scan of manifest ``source`` if it answers ``level`` and the manifest is
    unchanged since (its size and modification time); else None."""
    for target in (record_path(source), folder and folder / record_path(source).name):
        if target is None or not target.is_file():
            continue
        try:
            with np.load(target) as z:
                if not np.array_equal(z["key"], _manifest_key(source)):
                    continue
                if int(z["level"][0]) < level.rank or len(z["frames"]) != n:
                    continue
                kinds = json.loads(str(z["problem_json"]))
                problems = {
                    int(i): AudioProblem(k, d)
                    for i, (k, d) in zip(z["problem_index"], kinds, strict=True)
                }
                names = ("frames", "sample_rates", "channels")
                return Scan(
                    VerifyLevel(("none", "header", "decode")[int(z["level"][0])]),
                    *(z[name].copy() for name in names),
                    problems=problems,
                    file_sizes=z["file_sizes"].copy(),
                    file_mtimes=z["file_mtimes"].copy(),
                )
        except (OSError, ValueError, KeyError) as e:
            log.warning("ignoring the unreadable verify record %s (%s)", target, e)
    return None


def verified_scan(
    manifest: Manifest,
    level: VerifyLevel,
    workers: int = 8,
    progress: bool = True,
    folder: Path | None = None,
    write: bool = True,
) -> Scan:
    """The scan of a one-corpus ``manifest`` at ``level``: from its record when there is one
    (files whose size or modification time changed since are checked again, and the record
    updated), else scanned now and recorded (with ``write``). ``folder``: where to keep the
    record when the manifest's folder is read-only (the run folder)."""
    source = manifest.source
    scan = load_record(source, level, len(manifest), folder)
    if scan is not None:
        now = stat_files(manifest)
        changed = np.flatnonzero((now.sizes != scan.file_sizes) | (now.mtimes != scan.file_mtimes))
        if not len(changed):
            log.info(
                "%s: verified before (%s), %d files unchanged", source, scan.level, len(manifest)
            )
            return scan
        log.info(
            "%s: %d files changed since they were verified: checking them again",
            source,
            len(changed),
        )
        scan = scan_files(manifest, scan.level, workers, None, indices=changed, base=scan)
    else:
        title = f"{level} check of {source.name}" if progress else None
        scan = scan_files(manifest, level, workers, title)
    if write:
        save_record(source, scan, folder)
    return scan
