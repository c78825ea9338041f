"""fairseq-compatible TSV manifests: first line the root, then ``relative/path<TAB>num_samples``.

Manifests written here load in fairseq (``wav2vec_manifest.py`` format) and fairseq's load here. A
root line that is relative is resolved against the manifest's own folder, so a manifest committed
next to its corpus works from any clone. Reading (`read_manifest`, `Manifest`) is in index.py.
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.data.audio import AudioInfo, AudioProblem, inspect_audio

# the reading side lives in index.py (the manifest as columns); its names stay importable here
from w2v2_pretrain.data.index import Manifest, ManifestEntry, read_manifest
from w2v2_pretrain.errors import DataError

__all__ = ["Manifest", "ManifestEntry", "read_manifest", "write_manifest", "build_manifests"]


def write_manifest(path: Path, root: Path, entries: list[tuple[str, int]]) -> None:
    """Write atomically: an interrupted run never leaves half a manifest."""
    with atomic_open(path, "w") as f:
        print(root, file=f)
        for rel, num in entries:
            print(f"{rel}\t{num}", file=f)


@dataclass
class ManifestReport:
    """What `build_manifests` did: counts per split and every file it skipped, with the reason."""

    train: int = 0
    valid: int = 0
    train_seconds: float = 0.0
    valid_seconds: float = 0.0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    filtered: Counter = field(default_factory=Counter)


def find_audio(root: Path, ext: str, on_error: Callable[[str, str], None]) -> Iterator[Path]:
    """Files under ``root`` (any depth) whose suffix is ``.ext``, in sorted, stable order.

    Directories that cannot be listed are passed to ``on_error(path, reason)`` and skipped.
    """
    suffix = "." + ext.lower().lstrip(".")
    stack = [root]
    found = []
    while stack:
        d = stack.pop()
        try:
            with os.scandir(d) as it:
                for e in it:
                    if e.is_dir(follow_symlinks=True):
                        stack.append(Path(e.path))
                    elif e.name.lower().endswith(suffix):
                        found.append(Path(e.path))
        except OSError as err:
            on_error(str(d), f"cannot read directory: {err.strerror or err}")
    return iter(sorted(found))


@dataclass
class _Split:
    """The ``(relative path, frames)`` rows of each manifest."""

    train: list[tuple[str, int]] = field(default_factory=list)
    valid: list[tuple[str, int]] = field(default_factory=list)


def _read_headers(
    files: list[Path], decode: bool, workers: int, progress: bool
) -> list[AudioInfo | AudioProblem]:
    """`inspect_audio` of every file, in parallel threads, in order."""
    with ThreadPoolExecutor(max(1, workers)) as pool:
        headers = pool.map(partial(inspect_audio, decode=decode), files, chunksize=16)
        if progress:
            from tqdm import tqdm

            desc = "decoding" if decode else "reading headers"
            headers = tqdm(headers, total=len(files), desc=desc, unit="file")
        return list(headers)


def _length_filter(seconds: float, min_seconds: float, max_seconds: float | None) -> str | None:
    """Why a clip this long stays out of the manifests (``--min/max-seconds``), or None."""
    if seconds < min_seconds:
        return "shorter than --min-seconds"
    if max_seconds is not None and seconds > max_seconds:
        return "longer than --max-seconds"
    return None


def _split(
    root: Path,
    files: list[Path],
    headers: list[AudioInfo | AudioProblem],
    report: ManifestReport,
    *,
    valid_percent: float,
    seed: int,
    min_seconds: float,
    max_seconds: float | None,
) -> _Split:
    """Assign each usable file to train or valid as fairseq does, counting it in ``report``
    (with the files skipped or filtered out)."""
    rng = random.Random(seed)
    split = _Split()
    for path, res in zip(files, headers, strict=True):
        if isinstance(res, AudioProblem):
            report.skipped.append((str(path), res.detail))
            continue
        seconds = res.frames / res.sample_rate
        reason = _length_filter(seconds, min_seconds, max_seconds)
        if reason:
            report.filtered[reason] += 1
            continue
        row = (str(path.relative_to(root)), res.frames)
        if rng.random() > valid_percent:
            split.train.append(row)
            report.train += 1
            report.train_seconds += seconds
        else:
            split.valid.append(row)
            report.valid += 1
            report.valid_seconds += seconds
    return split


def build_manifests(
    root: str | os.PathLike,
    dest: str | os.PathLike,
    *,
    ext: str = "flac",
    valid_percent: float = 0.01,
    seed: int = 42,
    min_seconds: float = 0.0,
    max_seconds: float | None = None,
    workers: int = 8,
    progress: bool = True,
    relative_root: bool = False,
    decode: bool = False,
) -> ManifestReport:
    """Walk a LibriSpeech-style tree and write ``dest/train.tsv`` and ``dest/valid.tsv``.

    The split is fairseq's: each file in order draws ``rng.random()`` and goes to valid when it
    is <= ``valid_percent``; with sorted order and a seed it is deterministic. Headers are read in
    parallel threads; unreadable or empty files are skipped, counted and listed in the report.
    ``decode`` decodes every file in full instead (catches truncated FLACs, whose header is
    intact, and NaN/Inf or all-zero audio), in the same threads.
    ``relative_root`` writes the root relative to ``dest`` (portable, for a committed corpus;
    fairseq itself resolves a relative root against its working directory instead).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: audio root does not exist or is not a directory")
    if not 0.0 <= valid_percent <= 1.0:
        raise DataError(f"--valid-percent must be in [0, 1], got {valid_percent}")
    root = root.resolve()
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    report = ManifestReport()
    files = list(find_audio(root, ext, lambda p, why: report.skipped.append((p, why))))
    if not files and not report.skipped:
        raise DataError(f"{root}: no *.{ext} files found")
    headers = _read_headers(files, decode, workers, progress)
    split = _split(
        root,
        files,
        headers,
        report,
        valid_percent=valid_percent,
        seed=seed,
        min_seconds=min_seconds,
        max_seconds=max_seconds,
    )
    root_line = Path(os.path.relpath(root, dest.resolve())) if relative_root else root
    write_manifest(dest / "train.tsv", root_line, split.train)
    write_manifest(dest / "valid.tsv", root_line, split.valid)
    return report
