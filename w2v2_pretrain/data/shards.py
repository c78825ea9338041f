"""Sharded audio: lhotse Shar tar files read as streams from a folder, HTTP(S), a command or
object storage.

A shard folder (written by ``w2v2-shard``) holds, per split, lhotse Shar shards:
``train/recording.000000.tar`` (``<id>.flac`` + ``<id>.json`` per utterance, the layout lhotse's
``CutSet.from_shar`` reads, as NeMo and icefall do) and ``train/cuts.000000.jsonl.gz``, plus one
``index.json`` of every utterance's length, so that a run plans its batches from one small
download. Within a shard the utterances are sorted by length: a batch of the length-bucketed
plan is a run of consecutive members, and a shard is read front to back, once, by the loader
worker its batches are dealt to (`ShardBatchSampler`).

Locations: a folder, an ``http(s)://`` URL prefix, any URL fsspec opens (``s3://``, ``gs://``,
... with its package installed), or ``pipe:COMMAND`` with ``{}`` where the shard's path goes
(``pipe:aws s3 cp s3://bucket/ls960/{} -``). A read that fails (a dropped connection, a server
that went away, a command that exited non-zero) is retried a bounded number of times, reopening
and reading forward to the same member, then stops with a `DataError` naming the shard.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import io
import json
import subprocess
import tarfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from time import sleep
from typing import IO

import numpy as np

from w2v2_pretrain.data.dataset import AudioDataset
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.sampler import (
    BucketBatchSampler,
    EpochPlan,
    _greedy_bounds,
    draw_by_share,
)
from w2v2_pretrain.errors import DataError, SourceUnavailable

INDEX = "index.json"
FORMAT = "w2v2-shards"
VERSION = 1


# --- where the bytes come from ---------------------------------------------------------------


class Location(str):
    """A shard folder or URL prefix; ``location / "train/recording.000000.tar"`` names a shard
    in it (a ``pipe:`` command puts the name where its ``{}`` is)."""

    def __truediv__(self, name: str) -> Location:
        if self.startswith("pipe:"):
            return Location(self.replace("{}", f"{name}{{}}", 1)) if "{}" in self else self
        return Location(f"{self.rstrip('/')}/{name}")

    @property
    def name(self) -> str:
        return self.rstrip("/").rsplit("/", 1)[-1]

    def command(self) -> str:
        """The shell command of a ``pipe:`` location (its ``{}`` dropped)."""
        return self.removeprefix("pipe:").replace("{}", "")


@dataclass(frozen=True)
class Transfer:
    """How patiently a location is read (``data.shard_retries``, ``data.shard_timeout``)."""

    retries: int = 3
    """Further tries after a failed open or read, each after twice the wait of the last."""
    timeout: float = 30.0
    """Seconds a connection may stay silent before the read counts as failed."""
    backoff: float = 1.0
    """Seconds before the first retry."""


class _Retryable(Exception):
    """A failure worth another try (the connection, not the data)."""


def open_location(location: Location, timeout: float) -> IO[bytes]:
    """A readable binary stream of one shard (or the index)."""
    if location.startswith("pipe:"):
        return _Pipe(location.command())
    if location.startswith(("http://", "https://")):
        try:
            return urllib.request.urlopen(location, timeout=timeout)  # noqa: S310 (http only)
        except urllib.error.HTTPError as e:
            if e.code in (408, 429) or e.code >= 500:
                raise _Retryable(f"HTTP {e.code} {e.reason}") from None
            raise DataError(f"{location}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError) as e:
            raise _Retryable(str(getattr(e, "reason", e))) from None
    if "://" in location:
        try:
            import fsspec
        except ImportError:  # pragma: no cover (torch installs fsspec)
            raise DataError(f"{location}: reading this URL needs fsspec") from None
        try:
            return fsspec.open(location, "rb").open()
        except ImportError as e:
            raise DataError(f"{location}: {e}") from None
        except FileNotFoundError:
            raise DataError(f"{location}: not found") from None
        except OSError as e:
            raise _Retryable(str(e)) from None
    try:
        return open(location, "rb")
    except FileNotFoundError:
        raise DataError(f"{location}: not found") from None


class _Pipe(io.RawIOBase):
    """The standard output of a shell command as a stream; a non-zero exit is a failed read."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.proc = subprocess.Popen(
            command,
            shell=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,  # noqa: S602
        )

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = self.proc.stdout.readinto(buffer)
        if n == 0 and self.proc.wait() != 0:
            err = self.proc.stderr.read().decode(errors="replace").strip().splitlines()
            raise OSError(
                f"`{self.command}` exited {self.proc.returncode}: {err[-1] if err else ''}"
            )
        return n

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()
        super().close()


def with_retries(what: Location, transfer: Transfer, attempt: Callable[[], object]):
    """``attempt()``, tried again after a retryable failure at most ``transfer.retries`` times
    (waiting ``backoff``, then twice as long each time); then a `DataError` naming ``what``."""
    wait = transfer.backoff
    for tries in range(1, transfer.retries + 2):
        try:
            return attempt()
        except DataError:
            raise
        except (_Retryable, OSError, EOFError, tarfile.TarError, http.client.HTTPException) as e:
            reason = str(e) or type(e).__name__
            if tries > transfer.retries:
                raise SourceUnavailable(
                    f"{what}: {reason} (gave up after {tries} tries; data.shard_retries, "
                    "data.shard_timeout)"
                ) from None
            sleep(wait)
            wait *= 2
    raise AssertionError("unreachable")


def read_bytes(location: Location, transfer: Transfer) -> bytes:
    def attempt() -> bytes:
        with open_location(location, transfer.timeout) as f:
            return f.read()

    return with_retries(location, transfer, attempt)


# --- the index -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardSplit:
    """One split of a shard folder, as columns.

    Shape (N utterances, S shards):
        shards: (S,) each shard's tar, relative to the folder (``train/recording.000000.tar``).
        ids: (N,) each utterance's id (its tar member is ``<id>.flac``).
        num_samples: (N,) int64 length at ``sample_rate``.
        shard: (N,) int32 the shard of each utterance; pos: (N,) int32 its place in it.
    Utterances are numbered shard by shard, in member order.
    """

    location: Location
    sample_rate: int
    shards: tuple[str, ...]
    ids: tuple[str, ...]
    num_samples: np.ndarray
    shard: np.ndarray
    pos: np.ndarray
    skipped: tuple[str, ...] = ()
    dropped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.num_samples)

    def select(self, keep: np.ndarray) -> ShardSplit:
        """The utterances at ``keep`` (ascending); their shards and member places stay."""
        keep = np.asarray(keep, dtype=np.int64)
        return dataclasses.replace(
            self,
            ids=tuple(self.ids[i] for i in keep.tolist()),
            num_samples=self.num_samples[keep],
            shard=self.shard[keep],
            pos=self.pos[keep],
        )

    def url(self, s: int) -> Location:
        return self.location / self.shards[s]

    def bounds(self) -> np.ndarray:
        """(S + 1,) where each shard's utterances start in the numbering."""
        return np.searchsorted(self.shard, np.arange(len(self.shards) + 1)).astype(np.int64)

    def manifest(self, corpus: int = 0) -> Manifest:
        """The split as a `Manifest` (paths: the member names), for what counts and describes
        utterances the same way for manifests and shards."""
        names = [f"{i}.flac".encode() for i in self.ids]
        ends = np.cumsum([len(b) for b in names], dtype=np.int64)
        n = len(self)
        return Manifest(
            sources=(self.location / INDEX,),
            roots=(self.location,),
            path_data=np.frombuffer(b"".join(names), dtype=np.uint8),
            path_starts=ends - np.array([len(b) for b in names], dtype=np.int64),
            path_ends=ends,
            num_samples=self.num_samples,
            lines=self.pos.astype(np.int32),
            corpus=np.full(n, corpus, dtype=np.int16),
            sample_rates=np.full(n, self.sample_rate, dtype=np.int32),
            outside=np.zeros(n, dtype=bool),
        )


def read_index(location: str, split: str, transfer: Transfer = Transfer()) -> ShardSplit:
    """The ``split`` of the shard folder at ``location`` (its ``index.json``)."""
    location = Location(location)
    where = location / INDEX
    raw = read_bytes(where, transfer)
    try:
        index = json.loads(raw)
        if index.get("format") != FORMAT:
            raise ValueError(f"not a {FORMAT} index")
        if index.get("version") != VERSION:
            raise ValueError(f"version {index.get('version')}, this reads {VERSION}")
        part = index["splits"][split]
        shards = part["shards"]
        counts = [len(s["num_samples"]) for s in shards]
        if any(len(s["ids"]) != c for s, c in zip(shards, counts, strict=True)):
            raise ValueError("ids and num_samples differ in length")
        num_samples = np.array(
            [n for s in shards for n in s["num_samples"]], dtype=np.int64
        ).reshape(-1)
        return ShardSplit(
            location=location,
            sample_rate=int(index["sample_rate"]),
            shards=tuple(s["recording"] for s in shards),
            ids=tuple(i for s in shards for i in s["ids"]),
            num_samples=num_samples,
            shard=np.repeat(np.arange(len(shards), dtype=np.int32), counts),
            pos=np.concatenate(
                [np.arange(c, dtype=np.int32) for c in counts] or [np.zeros(0)]
            ).astype(np.int32),
            skipped=tuple(part.get("skipped", ())),
            dropped=dict(part.get("dropped", {})),
        )
    except (ValueError, KeyError, TypeError) as e:
        what = e.args[0] if isinstance(e, KeyError) else e
        raise DataError(
            f"{where}: not a shard index ({what}); write one with w2v2-shard"
        ) from None


# --- reading a shard front to back -----------------------------------------------------------


class ShardStream:
    """One shard's audio members, read in order from a tar stream.

    `member(pos)` returns the bytes of the ``pos``-th audio member, reading forward past the
    earlier ones (a stream is never read backwards: asking for an earlier member reopens it).
    A failed read reopens the shard and reads forward to the same member again, at most
    ``transfer.retries`` times in a row."""

    def __init__(self, location: Location, transfer: Transfer) -> None:
        self.location = location
        self.transfer = transfer
        self.next_pos = 0  # the audio member the stream stands before
        self._raw: IO[bytes] | None = None
        self._tar: tarfile.TarFile | None = None

    def _open(self) -> None:
        self.close()
        self._raw = open_location(self.location, self.transfer.timeout)
        self._tar = tarfile.open(fileobj=self._raw, mode="r|")  # noqa: SIM115 (kept open: read on)
        self.next_pos = 0

    def _next_audio(self) -> tuple[str, bytes | None]:
        """The next audio member's name and bytes (None: past the end)."""
        while True:
            info = self._tar.next()
            if info is None:
                return "", None
            if info.name.endswith(".json") or not info.isfile():
                continue
            data = self._tar.extractfile(info).read()
            if len(data) != info.size:
                raise EOFError(f"member {info.name} cut short")
            return info.name, data

    def member(self, pos: int) -> tuple[str, bytes | None]:
        """The name and bytes of audio member ``pos`` (bytes None: the shard has fewer)."""

        def attempt() -> tuple[str, bytes | None]:
            try:
                if self._tar is None or self.next_pos > pos:
                    self._open()
                while True:
                    name, data = self._next_audio()
                    self.next_pos += 1
                    if data is None or self.next_pos - 1 == pos:
                        return name, data
            except Exception:
                self.close()  # the next try reopens and reads forward again
                raise

        return with_retries(self.location, self.transfer, attempt)

    def close(self) -> None:
        for closing in (self._tar, self._raw):
            if closing is not None:
                with contextlib.suppress(Exception):  # a broken stream closes as it can
                    closing.close()
        self._tar = self._raw = None


class ShardDataset(AudioDataset):
    """Utterances of sharded corpora, addressed like `AudioDataset`'s ((index, epoch, copy)).

    Each loader worker keeps its shards open and reads them forward; the batches dealt to it
    by `ShardBatchSampler` ask for their members in that order, so each shard is read once
    per draw. Asked out of order (fewer workers than planned, a resume) it reopens the shard:
    slower, never wrong. Crops, masks and bad-item handling are `AudioDataset`'s.
    """

    def __init__(self, splits: list[ShardSplit], transfer: Transfer, **kw) -> None:
        manifest = Manifest.concat([s.manifest(c) for c, s in enumerate(splits)])
        super().__init__(manifest, **kw)
        self.splits = splits
        self.transfer = transfer
        self.corpus_start = np.cumsum([0] + [len(s) for s in splits])
        self._streams: dict[tuple[int, int], ShardStream] = {}
        self._last: tuple[int, bytes] | None = None

    def _locate(self, index: int) -> tuple[ShardSplit, int, int]:
        c = int(np.searchsorted(self.corpus_start, index, side="right") - 1)
        split = self.splits[c]
        local = index - int(self.corpus_start[c])
        return split, c, local

    def where(self, index: int) -> str:
        split, _, local = self._locate(index)
        return f"{split.url(int(split.shard[local]))} ({split.ids[local]}.flac)"

    def source_of(self, index: int):
        """The bytes of utterance ``index``'s member (a `DataError` when it is missing)."""
        if self._last is not None and self._last[0] == index:  # read again (a silence check)
            return io.BytesIO(self._last[1])
        split, c, local = self._locate(index)
        s = int(split.shard[local])
        key = (c, s)
        stream = self._streams.get(key)
        if stream is None:
            for old in list(self._streams):  # one open shard per corpus and worker
                if old[0] == c:
                    self._streams.pop(old).close()
            stream = self._streams[key] = ShardStream(split.url(s), self.transfer)
        name, data = stream.member(int(split.pos[local]))
        expected = f"{split.ids[local]}.flac"
        if data is None:
            raise DataError(f"{self.where(index)}: not in the shard (it ends earlier)")
        if Path(name).name != expected:
            raise DataError(
                f"{self.where(index)}: the shard holds {name} there: index.json and the shard "
                "disagree (rewrite them together with w2v2-shard)"
            )
        self._last = (index, data)
        return io.BytesIO(data)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_streams"], state["_last"] = {}, None  # a worker opens its own
        return state


# --- the batch plan --------------------------------------------------------------------------


class ShardBatchSampler(BucketBatchSampler):
    """Length-bucketed batches under ``max_tokens`` that read the shards as streams.

    Per epoch: the shards are shuffled (training) and dealt to the ``num_replicas x workers``
    streams (each rank's loader workers), balanced by utterances. Each shard is cut greedily in
    member order (sorted by length when written: the same budget rule as
    `BucketBatchSampler`), so a batch is a run of consecutive members and a stream reads its
    shards front to back. Streams are evened out by splitting their largest batches, so every
    rank has the same number of batches, and rank ``r``'s batch ``k`` comes from its stream
    ``k % workers`` (the loader hands batch ``k`` to worker ``k % workers``). Corpus weights
    draw each corpus's shards as often as its share asks (a shard drawn twice numbers its
    copies: their crops and masks differ). Resume, epochs and ``fixed_epoch`` are
    `BucketBatchSampler`'s: the plan is a function of (seed, epoch, world, workers).

    Args (beyond `BucketBatchSampler`'s):
        shard_bounds: (S + 1,) where each shard's utterances start (corpora one after another).
        shard_corpus: (S,) the corpus of each shard.
        workers: loader workers per rank (0 counts as 1).
    """

    def __init__(
        self,
        sizes: np.ndarray,
        max_tokens: int,
        shard_bounds: np.ndarray,
        shard_corpus: np.ndarray,
        workers: int = 1,
        **kw,
    ) -> None:
        self.shard_bounds = np.asarray(shard_bounds, dtype=np.int64)
        self.shard_corpus = np.asarray(shard_corpus, dtype=np.int64)
        self.workers = max(1, workers)
        corpora = np.repeat(self.shard_corpus, np.diff(self.shard_bounds))
        super().__init__(sizes, max_tokens, corpora=corpora, **kw)

    def _draws(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """The shards of this epoch and each draw's copy number, in reading order."""
        shards = np.arange(len(self.shard_corpus))
        if self.weights is None:
            draws, copies = shards, np.zeros(len(shards), dtype=np.int64)
        else:
            share = self.weights / self.weights.sum()
            draws, copies = [], []
            for c in range(len(self.weights)):
                own = shards[self.shard_corpus == c]
                drawn, copy = draw_by_share(len(own), int(round(share[c] * len(shards))), rng)
                draws.append(own[drawn])
                copies.append(copy)
            draws, copies = np.concatenate(draws), np.concatenate(copies)
        if self.shuffle:
            perm = rng.permutation(len(draws))
            draws, copies = draws[perm], copies[perm]
        return draws, copies

    def _make_plan(self, epoch: int) -> EpochPlan:
        rng = np.random.default_rng((self.seed, epoch))
        draws, copies = self._draws(rng)
        cuts, order, base = [], [], 0  # per draw: its batches as (start, end, copy) in order
        for shard, copy in zip(draws.tolist(), copies.tolist(), strict=True):
            lo, hi = int(self.shard_bounds[shard]), int(self.shard_bounds[shard + 1])
            if hi == lo:
                continue
            bounds = _greedy_bounds(self.sizes[lo:hi], self.max_tokens, self.max_batch_size)
            cuts.append(
                [(base + a, base + b, copy) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
            )
            order.append(np.arange(lo, hi))
            base += hi - lo
        total = sum(len(c) for c in cuts)
        if total < self.num_replicas:
            raise DataError(
                f"{base} utterances make {total} batches, fewer than the {self.num_replicas} "
                "processes of this run"
            )
        # a split of few batches (validation) is read by fewer streams than there are workers
        workers = min(self.workers, total // self.num_replicas)
        streams = _whole_shards(cuts, self.num_replicas * workers)
        if not _even_out(streams, drop=False):
            streams = _runs(cuts, self.num_replicas * workers)
            _even_out(streams, drop=True)
        count = len(streams[0])
        # rank r's batch k is stream r * workers + k % workers, its batch k // workers; the
        # plan deals batch j to rank j % num_replicas
        starts = np.zeros(count * len(streams), dtype=np.int64)
        ends, cps = np.zeros_like(starts), np.zeros_like(starts)
        for r in range(self.num_replicas):
            for w in range(workers):
                for i, (a, b, copy) in enumerate(streams[r * workers + w]):
                    j = (i * workers + w) * self.num_replicas + r
                    starts[j], ends[j], cps[j] = a, b, copy
        order = np.concatenate(order) if order else np.zeros(0, dtype=np.int64)
        return EpochPlan(order, starts, ends, cps)


Stream = list[tuple[int, int, int]]
"""A loader stream's batches in reading order: (start, end, copy) in the epoch's order."""


def _whole_shards(cuts: list[Stream], n: int) -> list[Stream]:
    """Each shard's batches to the stream with the fewest utterances so far: every shard is
    read by one stream."""
    streams: list[Stream] = [[] for _ in range(n)]
    load = np.zeros(n, dtype=np.int64)
    for batches in cuts:
        s = int(np.argmin(load))
        load[s] += batches[-1][1] - batches[0][0]
        streams[s] += batches
    return streams


def _runs(cuts: list[Stream], n: int) -> list[Stream]:
    """The epoch's batches cut into ``n`` runs of (nearly) as many batches: a shard at the
    end of one run and the start of the next is read by both streams, each its part (few
    shards, or shards of very different sizes)."""
    flat = [b for batches in cuts for b in batches]
    bounds = np.linspace(0, len(flat), n + 1).astype(int).tolist()
    return [flat[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _even_out(streams: list[Stream], drop: bool) -> bool:
    """Split the largest batches of the shorter streams (a split batch stays a run of
    members) until every stream has as many as the longest. Where a stream cannot (its
    batches are single utterances): False, or with ``drop`` every stream is cut to the
    shortest (a batch or so an epoch). True when all are even without dropping."""
    longest = max(len(s) for s in streams)
    for s in streams:
        while 0 < len(s) < longest:
            big = max(range(len(s)), key=lambda k: s[k][1] - s[k][0])
            a, b, copy = s[big]
            if b - a < 2:
                break
            mid = a + (b - a) // 2
            s[big : big + 1] = [(a, mid, copy), (mid, b, copy)]
    even = all(len(s) == longest for s in streams)
    if drop:
        count = min(len(s) for s in streams)
        for s in streams:
            del s[count:]
    return even


def shard_sizes_in_order(splits: list[ShardSplit]) -> tuple[np.ndarray, np.ndarray]:
    """(S + 1,) the shards' bounds and (S,) their corpus, for corpora numbered one after
    another (as `ShardDataset` numbers them)."""
    bounds, corpus, base = [np.zeros(1, dtype=np.int64)], [], 0
    for c, split in enumerate(splits):
        b = split.bounds()
        bounds.append(b[1:] + base)
        corpus.append(np.full(len(split.shards), c, dtype=np.int64))
        base += len(split)
    return np.concatenate(bounds), np.concatenate(corpus)
