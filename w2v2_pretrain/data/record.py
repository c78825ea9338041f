"""The verify record: a manifest's `Scan` kept beside it, so later runs, resumes and the other
DDP ranks read it instead of checking every file again.

``train.tsv.verified.npz`` (or, where the manifest's folder is read-only, in the run folder) is
keyed by the manifest's size and modification time and holds each file's size and modification
time: `verified_scan` checks again only the files replaced or truncated since.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.data.audio import AudioProblem
from w2v2_pretrain.data.config import VerifyLevel
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.scan import Scan, scan_files, stat_files
from w2v2_pretrain.logs import run_logger

log = run_logger(__name__)  # every rank reads the same record: said once

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
