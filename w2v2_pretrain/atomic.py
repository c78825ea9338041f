"""Files that appear whole or not at all: checkpoints, model files, manifests, features.

Written to a hidden temporary file in the target's folder, flushed to disk, then renamed over
the target; whatever kills the process, the target is the old file or the new one. A writer
killed mid-write leaves its temporary file behind: `unfinished` finds them.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from w2v2_pretrain.errors import DataError


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


@contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """``open(path, mode)`` for writing, atomically (see the module's docstring)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary(path)
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """A folder that appears whole: yields a temporary folder beside ``path`` to fill, then
    renames it to ``path``; a folder already there is renamed aside first and removed after.
    A failure leaves ``path`` as it was."""
    import shutil

    path = Path(path)
    tmp, old = _temporary(path), path.with_name(f".{path.name}.{os.getpid()}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def unfinished(folder: str | Path, pattern: str = "*") -> list[Path]:
    """The temporary files of writes into ``folder`` (targets matching ``pattern``) that a
    killed process never finished."""
    return sorted(Path(folder).glob(f".{pattern}.*.tmp"))


def writable_dir(path: str | Path, name: str) -> Path:
    """Create ``path`` (and its parents) if needed and check that files can be written there,
    before any work is done; else a `DataError` naming ``name`` (the option), the path and the
    cause: a file in the way, a folder under a file, no permission, a read-only file system.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise DataError(f"{name} {path}: is a file, not a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = _temporary(path / ".write-probe")
        probe.touch()
        probe.unlink()
    except OSError as e:
        raise DataError(f"{name} {path}: cannot write there: {_cause(path, e)}") from None
    return path


def _cause(path: Path, e: OSError) -> str:
    """An OSError as a user reads it; a folder under a file names the file."""
    if isinstance(e, NotADirectoryError | FileExistsError):
        for parent in path.parents:
            if parent.exists() and not parent.is_dir():
                return f"{parent} is a file"
    return e.strerror or str(e)
