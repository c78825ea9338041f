"""Reading a shard front to back: one shard's members in order from a tar stream
(`ShardStream`), and the dataset over the shards of several corpora (`ShardDataset`)."""

from __future__ import annotations

import contextlib
import io
import tarfile
from pathlib import Path
from typing import IO

import numpy as np

from w2v2_pretrain.data.dataset import AudioDataset
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.shards.index import ShardSplit
from w2v2_pretrain.data.shards.transport import Location, Transfer, open_location, with_retries
from w2v2_pretrain.errors import DataError


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
