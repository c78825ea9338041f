"""A shard folder's ``index.json``: every split's shards and each utterance's length, as columns
(`ShardSplit`), read in one small download."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

import numpy as np

from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.shards import FORMAT, INDEX, VERSION
from w2v2_pretrain.data.shards.transport import Location, Transfer, read_bytes
from w2v2_pretrain.errors import DataError


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
    bad_files: tuple[str, ...] = ()
    """What ``w2v2-shard`` could not use (``where: reason``), named; not in the shards."""
    skipped: dict[str, int] = field(default_factory=dict)
    """What it skipped, counted by reason (the bad files and the clips too short)."""

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


def read_index(location: str, split: str, transfer: Transfer | None = None) -> ShardSplit:
    """The ``split`` of the shard folder at ``location`` (its ``index.json``)."""
    location = Location(location)
    where = location / INDEX
    raw = read_bytes(where, transfer or Transfer())
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
            # index.json's own keys (version 1): "skipped" names, "dropped" counts
            bad_files=tuple(part.get("skipped", ())),
            skipped=dict(part.get("dropped", {})),
        )
    except (ValueError, KeyError, TypeError) as e:
        what = e.args[0] if isinstance(e, KeyError) else e
        raise DataError(
            f"{where}: not a shard index ({what}); write one with w2v2-shard"
        ) from None
