"""fairseq-compatible TSV manifests: first line the root, then ``relative/path<TAB>num_samples``.

Manifests written here load in fairseq (``wav2vec_manifest.py`` format) and fairseq's load here. A
root line that is relative is resolved against the manifest's own folder, so a manifest committed
next to its corpus works from any clone. This module writes them (`build_manifests` walks a
LibriSpeech-style tree); reading them is tsv.py (`read_manifest`) into index.py's `Manifest`.
"""

from __future__ import annotations

import errno
import os
import random
import stat
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from w2v2_pretrain.atomic import atomic_open, writable_dir
from w2v2_pretrain.data.audio import AudioInfo, AudioProblem, inspect_audio
from w2v2_pretrain.data.parallel import in_threads
from w2v2_pretrain.errors import DataError

SHORTER, LONGER = "shorter than --min-seconds", "longer than --max-seconds"
"""The reasons a clip is skipped by a setting (`ManifestReport.skipped`), not as a bad file."""


def write_manifest(path: Path, root: Path, entries: list[tuple[str, int]]) -> None:
    """Write atomically: an interrupted run never leaves half a manifest."""
    with atomic_open(path, "w") as f:
        print(root, file=f)
        for rel, num in entries:
            print(f"{rel}\t{num}", file=f)


@dataclass
class ManifestReport:
    """What `build_manifests` did: counts per split, and what it skipped: counted by reason
    (``skipped``: the bad files' kinds, and `SHORTER` / `LONGER` for the clips a setting left
    out), the bad files (or folders) also named with why (``bad_files``)."""

    train: int = 0
    valid: int = 0
    train_seconds: float = 0.0
    valid_seconds: float = 0.0
    bad_files: list[tuple[str, str]] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)

    def bad_file(self, path: str, kind: str, detail: str) -> None:
        self.bad_files.append((path, detail))
        self.skipped[kind] += 1


# what str.splitlines (our reader) or a text file (fairseq's) splits on, and the column separator
_UNHOLDABLE = "\t\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def name_problem(name: str) -> str | None:
    """Why a file or folder name cannot be written into a manifest line, or None."""
    if any(c in _UNHOLDABLE for c in name):
        return "its name holds a tab or line break, which a manifest line cannot hold"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.scandir passes undecodable bytes on as surrogates
        return "its name is not valid UTF-8, which a manifest (UTF-8 text) cannot hold"
    return None


def printable(path: str | os.PathLike) -> str:
    """A path as one printable line: undecodable bytes as ``\\xNN``, tabs and breaks escaped."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


_KINDS = {stat.S_IFIFO: "FIFO", stat.S_IFSOCK: "socket", stat.S_IFCHR: "character device"}
_KINDS[stat.S_IFBLK] = "block device"

OnSkip = Callable[[str, str, str], None]
"""``on_skip(path, kind, detail)``: a file or folder the walk leaves out, and why."""


class _Walk:
    """The walk behind `find_audio`: each real folder and each real file once.

    Real folders are walked first, then the folders that symbolic links point to (corpora
    assembled from links), each once: a link to a folder already walked is a loop when the
    folder contains the link, else a second way to the same files; both are reported and left
    out. Links to files come last, so a file is listed under its own name where it has one.
    """

    def __init__(self, root: Path, suffix: str, on_skip: OnSkip):
        self.suffix = suffix
        self.on_skip = on_skip
        st = root.stat()
        self.dirs: dict[tuple[int, int], Path] = {(st.st_dev, st.st_ino): root}
        self.files: dict[tuple[int, int], Path] = {}
        self.stack = [root]
        self.dir_links: list[Path] = []
        self.file_links: list[Path] = []

    def run(self) -> list[Path]:
        while self.stack or self.dir_links:
            while self.stack:
                self._scan(self.stack.pop())
            if self.dir_links:
                self._follow(self.dir_links.pop(0))
        for path in self.file_links:
            try:
                self._file(path, path.stat())
            except OSError as err:
                self._stat_failed(path, err)
        return sorted(self.files.values())

    def _stat_failed(self, path: Path, err: OSError) -> None:
        if isinstance(err, FileNotFoundError):
            self.on_skip(printable(path), "broken link", "symbolic link to a missing file")
        elif err.errno == errno.ELOOP:
            self.on_skip(printable(path), "symlink loop", "symbolic link loop; not followed")
        else:
            self.on_skip(printable(path), "unreadable", f"cannot stat: {err.strerror}")

    def _scan(self, d: Path) -> None:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            self.on_skip(
                printable(d), "unreadable folder", f"cannot read directory: {err.strerror}"
            )
            return
        subdirs = []
        for e in entries:
            path = Path(e.path)
            try:
                is_dir = e.is_dir()  # follows links; False for a broken one, a FIFO, ...
                matches = not is_dir and e.name.lower().endswith(self.suffix)
                if not is_dir and not matches:
                    continue
                bad_name = name_problem(e.name)
                if bad_name:
                    self.on_skip(printable(path), "bad name", bad_name)
                elif is_dir and e.is_symlink():
                    self.dir_links.append(path)
                elif is_dir:
                    st = e.stat()
                    if self._first(self.dirs, st, path, "folder"):
                        subdirs.append(path)
                elif e.is_symlink():
                    self.file_links.append(path)
                else:
                    self._file(path, e.stat())
            except OSError as err:
                self._stat_failed(path, err)
        self.stack += reversed(subdirs)  # depth first, in name order

    def _follow(self, link: Path) -> None:
        """A symbolic link to a folder: walk its target unless that was walked already."""
        try:
            st = link.stat()
        except OSError as err:
            self._stat_failed(link, err)
            return
        seen = self.dirs.get((st.st_dev, st.st_ino))
        if seen is None:
            self.dirs[(st.st_dev, st.st_ino)] = link
            self.stack.append(link)
        elif Path(os.path.realpath(link.parent)).is_relative_to(os.path.realpath(link)):
            self.on_skip(
                printable(link),
                "symlink loop",
                f"symbolic link loop: points to {printable(os.path.realpath(link))}, a folder "
                "that holds the link; not followed",
            )
        else:
            self.on_skip(
                printable(link),
                "duplicate",
                f"links to a folder already listed as {printable(seen)}; not followed",
            )

    def _file(self, path: Path, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            kind = _KINDS.get(stat.S_IFMT(st.st_mode), "special file")
            self.on_skip(printable(path), "not a regular file", f"not a regular file ({kind})")
        else:
            self._first(self.files, st, path, "file")

    def _first(self, seen: dict, st: os.stat_result, path: Path, what: str) -> bool:
        """Record a real file or folder; False (and reported) if it was reached before."""
        key = (st.st_dev, st.st_ino)
        if key in seen:
            self.on_skip(
                printable(path),
                "duplicate",
                f"the same {what} as {printable(seen[key])}; listed once",
            )
            return False
        seen[key] = path
        return True


def find_audio(root: Path, ext: str, on_skip: OnSkip) -> list[Path]:
    """Regular files under ``root`` (any depth, through symbolic links) whose suffix is
    ``.ext``, each real file once, in sorted order.

    Left out, each passed to ``on_skip(path, kind, detail)``: folders that cannot be listed,
    symbolic link loops and second links to a folder or file already listed, broken links,
    FIFOs, sockets and devices (opening a FIFO would wait forever), and names a manifest
    cannot hold (a tab or line break, bytes that are not UTF-8).
    """
    return _Walk(root, "." + ext.lower().lstrip("."), on_skip).run()


@dataclass
class _Split:
    """The ``(relative path, frames)`` rows of each manifest."""

    train: list[tuple[str, int]] = field(default_factory=list)
    valid: list[tuple[str, int]] = field(default_factory=list)


def _length_filter(seconds: float, min_seconds: float, max_seconds: float | None) -> str | None:
    """Why a clip this long stays out of the manifests (``--min/max-seconds``), or None."""
    if seconds < min_seconds:
        return SHORTER
    if max_seconds is not None and seconds > max_seconds:
        return LONGER
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
    (with the files skipped)."""
    rng = random.Random(seed)
    split = _Split()
    for path, res in zip(files, headers, strict=True):
        if isinstance(res, AudioProblem):
            report.bad_file(printable(path), res.kind, res.detail)
            continue
        seconds = res.frames / res.sample_rate
        reason = _length_filter(seconds, min_seconds, max_seconds)
        if reason:
            report.skipped[reason] += 1
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
    parallel threads; unreadable or empty files are skipped, counted and listed in the report,
    as are what `find_audio` leaves out (link loops, FIFOs and devices, names a manifest cannot
    hold). ``dest`` that is a file, under a file or not writable is a `DataError` before the walk.
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
    if any(c in _UNHOLDABLE for c in str(root)):
        raise DataError(f"{printable(root)}: the root's path holds a tab or line break")
    dest = writable_dir(dest, "--dest")
    report = ManifestReport()
    files = find_audio(root, ext, report.bad_file)
    if not files and not report.bad_files:
        raise DataError(f"{root}: no *.{ext} files found")
    title = ("decoding" if decode else "reading headers") if progress else None
    headers = in_threads(lambda f: inspect_audio(f, decode=decode), files, workers, title)
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
