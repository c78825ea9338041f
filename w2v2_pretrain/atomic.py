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


def unfinished(folder: str | Path, pattern: str = "*") -> list[Path]:
    """The temporary files of writes into ``folder`` (targets matching ``pattern``) that a
    killed process never finished."""
    return sorted(Path(folder).glob(f".{pattern}.*.tmp"))
