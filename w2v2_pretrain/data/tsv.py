"""fairseq's manifest format, parsed vectorised: the first line is the audio root, then
``relative/path<TAB>num_samples`` per line (``wav2vec_manifest.py``). A UTF-8 byte-order mark
(Notepad writes one) is accepted, CRLF line ends too; blank lines are skipped.

The lines are split, the lengths read and the paths hashed with numpy over the file's bytes,
in chunks that bound the transient memory; only the rare lines the fast path does not take
(and the errors) become Python objects. pyarrow's CSV reader was measured for this and not
adopted (docs/performance.md, "Reading a manifest").
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from w2v2_pretrain.data.index import Manifest, frozen
from w2v2_pretrain.errors import DataError

BOM = b"\xef\xbb\xbf"
_CHUNK = 1 << 24  # bytes of manifest parsed per vectorised pass (bounds the transient memory)
_MAX_DIGITS = 18  # a longer count is not a plausible length (and would overflow int64)
_MAX_SAMPLES = int(np.iinfo(np.int64).max)
NL, CR, TAB, SLASH, DOT, ZERO = (ord(c) for c in "\n\r\t/.0")


def _read_head(path: Path) -> tuple[bytes, Path, int]:
    """The manifest's bytes, its root (checked to be a folder) and where its entries start."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: manifest not found") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read manifest: {e}") from None
    skip = len(BOM) if raw.startswith(BOM) else 0
    end = raw.find(b"\n", skip)
    body_start = len(raw) if end < 0 else end + 1
    try:
        root_text = raw[skip:body_start].decode("utf-8").strip()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}:1: cannot read manifest: {e}") from None
    if not root_text:
        raise DataError(f"{path}:1: first line must be the audio root directory, found nothing")
    root = Path(root_text)
    if not root.is_absolute():
        root = path.parent / root
    root = root.resolve()
    if not root.is_dir():
        raise DataError(f"{path}:1: root {root} does not exist or is not a directory")
    return raw, root, body_start


def read_manifest(path: str | os.PathLike) -> Manifest:
    """Parse and check a manifest; every problem is a `DataError` naming the file and line.

    Checks the root exists, each line has two tab-separated columns, the length is a positive
    integer and no file is listed twice (compared lexically: ``a/./b`` is ``a/b``). Paths are
    not resolved, as fairseq does not: a sub-folder or file of the root that is a symbolic link
    to elsewhere loads, and so do the ``../`` lines fairseq's ``wav2vec_manifest.py`` writes for
    such a corpus (``relpath(realpath(file), root)``; `Manifest.outside` marks them). A line
    that names no audio file (``../../etc/passwd``) is a bad file, named with its line, when
    the set-up check or the dataset opens it. File existence is checked by the dataset.
    """
    path = Path(path)
    raw, root, body_start = _read_head(path)
    data = np.frombuffer(raw, dtype=np.uint8)
    if (data[body_start:] >= 0x80).any():
        try:
            str(memoryview(raw)[body_start:], "utf-8")
        except UnicodeDecodeError as e:
            line = 2 + raw.count(b"\n", body_start, body_start + e.start)
            raise DataError(
                f"{path}:{line}: cannot read manifest: not UTF-8 ({e.reason})"
            ) from None
    parts, first_line = [], 2
    for lo, hi in _chunks(data, body_start):
        part = _parse_chunk(path, data[lo:hi], first_line)
        first_line += part.pop()
        part[0] += lo
        part[1] += lo
        parts.append(part)
    empty = [np.zeros(0, np.int64)] * 4 + [np.zeros(0, bool), np.zeros(0, np.uint64)]
    starts, ends, num, lines, odd, keys = (
        np.concatenate(col) for col in zip(empty, *parts, strict=True)
    )
    lines = lines.astype(np.int32)
    outside = _check_paths(path, root, data, starts, ends, lines, odd, keys)
    n = len(num)
    return Manifest(
        (path,),
        (root,),
        frozen(data),
        frozen(starts),
        frozen(ends),
        frozen(num),
        frozen(lines),
        frozen(np.zeros(n, dtype=np.int16)),
        frozen(np.zeros(n, dtype=np.int32)),
        frozen(outside),
    )


def _chunks(data: np.ndarray, start: int) -> list[tuple[int, int]]:
    """``(lo, hi)`` byte ranges from ``start`` of about `_CHUNK` bytes, each ending just after
    a newline (or at the end)."""
    out, lo = [], start
    while lo < len(data):
        hi = min(lo + _CHUNK, len(data))
        while hi < len(data):
            nl = np.flatnonzero(data[hi : hi + 4096] == NL)
            if len(nl):
                hi += int(nl[0]) + 1
                break
            hi += 4096
        hi = min(hi, len(data))
        out.append((lo, hi))
        lo = hi
    return out


def _parse_chunk(path: Path, arr: np.ndarray, first_line: int) -> list:
    """The lines in ``arr`` (the first is manifest line ``first_line``): each path's start and
    end in ``arr``, its length column, its line, whether normpath could respell it, its hash
    key; and (last) how many lines ``arr`` holds."""
    ends = np.flatnonzero(arr == NL)
    if not len(arr) or arr[-1] != NL:
        ends = np.append(ends, len(arr))
    count = len(ends)
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    line_no = first_line + np.arange(count, dtype=np.int64)
    stop = ends.copy()  # the line without its "\r\n" / "\n"
    cr = stop > starts
    cr[cr] = arr[stop[cr] - 1] == CR
    stop -= cr
    tabs = np.flatnonzero(arr == TAB)
    n_tabs = np.searchsorted(tabs, stop) - np.searchsorted(tabs, starts)
    tab = stop.copy()
    one = n_tabs == 1
    tab[one] = tabs[np.searchsorted(tabs, starts[one])]
    num, regular = _digits(arr, tab + 1, stop, one)
    keep = np.ones(count, dtype=bool)
    for k in np.flatnonzero(~regular).tolist():  # the few lines the fast path does not take
        text = arr[starts[k] : stop[k]].tobytes().decode("utf-8")
        value = _parse_line(path, int(line_no[k]), text)
        if value is None:
            keep[k] = False
        else:
            num[k] = value
            tab[k] = starts[k] + len(text.split("\t")[0].encode("utf-8"))
    if (tab[keep] == starts[keep]).any():
        k = int(np.flatnonzero(keep & (tab == starts))[0])
        raise DataError(f"{path}:{line_no[k]}: empty path before the tab")
    keys = _keys(arr, starts, tab)
    # paths whose spelling normpath could change: a leading "." or "/", a "/." or "//" inside
    slash = np.flatnonzero(arr[:-1] == SLASH)
    odd = np.zeros(count, dtype=bool)
    at = slash[np.isin(arr[slash + 1], (DOT, SLASH))]
    odd[np.searchsorted(starts, at, side="right") - 1] = True
    odd |= np.isin(arr[np.minimum(starts, len(arr) - 1)], (DOT, SLASH))
    odd |= arr[np.maximum(tab - 1, 0)] == SLASH
    return [starts[keep], tab[keep], num[keep], line_no[keep], odd[keep], keys[keep], count]


def _digits(
    arr: np.ndarray, lo: np.ndarray, hi: np.ndarray, ok: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The integer in ``arr[lo:hi]`` of each line where it is 1-18 plain digits, > 0, and
    ``ok``; which lines were so (the rest are left to `_parse_line`)."""
    width = np.where(ok, hi - lo, 0)
    regular = ok & (width >= 1) & (width <= _MAX_DIGITS)
    num = np.zeros(len(lo), dtype=np.int64)
    for k in range(int(width[regular].max(initial=0))):
        at = np.flatnonzero(regular & (width > k))
        d = arr[lo[at] + k].astype(np.int64) - ZERO
        num[at] = num[at] * 10 + d
        regular[at[(d < 0) | (d > 9)]] = False
    regular &= num > 0
    return num, regular


def _parse_line(path: Path, n: int, line: str) -> int | None:
    """One line the fast path did not take: its length, None for a blank line, or the
    `DataError` that names what is wrong."""
    if not line.strip():
        return None
    cols = line.split("\t")
    if len(cols) != 2:
        raise DataError(
            f"{path}:{n}: expected 2 tab-separated columns (path, num_samples), "
            f"found {len(cols)}: {line[:80]!r}"
        )
    size = cols[1]
    try:
        num = int(size)
    except ValueError:
        raise DataError(f"{path}:{n}: num_samples {size!r} is not an integer") from None
    if num <= 0:
        raise DataError(f"{path}:{n}: num_samples must be positive, got {num}")
    if num > _MAX_SAMPLES:
        raise DataError(f"{path}:{n}: num_samples {num} is more than a length can be (2^63 - 1)")
    return num


_P = np.uint32(16777619)  # FNV's prime; the hash is only a sort key, repeats are compared


def _keys(arr: np.ndarray, starts: np.ndarray, tab: np.ndarray) -> np.ndarray:
    """(lines,) uint64 sort key of each line's path ``arr[start:tab]``: its length and a 32-bit
    polynomial hash of its bytes (equal paths, equal keys; a shared key is compared exactly)."""
    line_len = np.append(starts[1:], len(arr)) - starts
    powers = _powers(int(line_len.max(initial=1)))
    pos = np.arange(len(arr), dtype=np.int32)
    pos -= np.repeat(starts.astype(np.int32), line_len)
    with np.errstate(over="ignore"):
        terms = (arr.astype(np.uint32) + np.uint32(1)) * powers[pos]
        bounds = np.stack([starts, np.maximum(tab, starts)], axis=1).ravel()
        sums = np.add.reduceat(terms, bounds[bounds < len(arr)])[0::2] if len(arr) else terms
    sums = np.resize(sums, len(starts))  # a last, empty line has no term
    return ((tab - starts).astype(np.uint64) << np.uint64(32)) | sums.astype(np.uint64)


def _powers(n: int) -> np.ndarray:
    powers = np.ones(n + 1, dtype=np.uint32)
    with np.errstate(over="ignore"):
        for k in range(1, n + 1):
            powers[k] = powers[k - 1] * _P
    return powers


def _key_of(spelling: str) -> np.uint64:
    raw = np.frombuffer(spelling.encode("utf-8", "surrogateescape") + b"\n", dtype=np.uint8)
    n = len(raw) - 1
    return _keys(raw, np.array([0]), np.array([n]))[0]


def _check_paths(path, root, data, starts, ends, lines, odd, keys) -> np.ndarray:
    """(N,) bool: which paths lead out of ``root`` lexically; a `DataError` for a path listed
    twice (compared as `os.path.normpath` spells them)."""
    outside = np.zeros(len(starts), dtype=bool)
    spelled: dict[int, str] = {}
    for k in np.flatnonzero(odd).tolist():
        rel = data[starts[k] : ends[k]].tobytes().decode("utf-8", "surrogateescape")
        norm = os.path.normpath(os.path.relpath(root / rel, root))
        outside[k] = norm == ".." or norm.startswith("../")
        spelled[k] = norm
        keys[k] = _key_of(norm)
    ordered = np.sort(keys)
    if not (ordered[1:] == ordered[:-1]).any():  # the usual case: every key its own
        return outside
    order = np.argsort(keys, kind="stable")
    same = keys[order][1:] == keys[order][:-1]
    # entries whose key another shares (hash collisions are rare): their spellings compared
    # exactly, in line order, so the first repeat is named with the line it repeats
    shared = np.zeros(len(order), dtype=bool)
    shared[1:] |= same
    shared[:-1] |= same
    first: dict[str, int] = {}
    for k in sorted(order[shared].tolist()):
        spelling = spelled.get(k) or data[starts[k] : ends[k]].tobytes().decode(
            "utf-8", "surrogateescape"
        )
        a = first.setdefault(spelling, k)
        if a != k:
            rel = data[starts[k] : ends[k]].tobytes().decode("utf-8", "surrogateescape")
            raise DataError(
                f"{path}:{lines[k]}: {rel!r} is listed again (first at line {lines[a]}): each "
                "file once, or it would count twice per epoch"
            )
    return outside
