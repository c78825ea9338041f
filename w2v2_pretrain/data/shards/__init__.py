"""Sharded audio: lhotse Shar tar files read as streams from a folder, HTTP(S), a command or
object storage.

A shard folder (written by ``w2v2-shard``, writer.py) holds, per split, lhotse Shar shards:
``train/recording.000000.tar`` (``<id>.flac`` + ``<id>.json`` per utterance, the layout lhotse's
``CutSet.from_shar`` reads, as NeMo and icefall do) and ``train/cuts.000000.jsonl.gz``, plus one
``index.json`` of every utterance's length (index.py), so that a run plans its batches from one
small download. Within a shard the utterances are sorted by length: a batch of the
length-bucketed plan (plan.py) is a run of consecutive members, and a shard is read front to
back, once, by the loader worker its batches are dealt to (reader.py), through a transport that
retries (transport.py).

Why not lhotse's reader: lhotse 1.33's ``open_best`` and ``TarIterator`` take no timeout and
never retry, its ``pipe:`` streams report a command's failure only when closed (and a tar stream
over them is never closed by tarfile), its pairwise iteration shifts every later pair after one
stray member, and ``import lhotse`` costs ~1.5 s and needs urllib3, which it does not declare.
So the transport and the tar reading are ours (the standard library's ``tarfile`` and
``urllib``, fsspec for other URLs), and lhotse stays what checks the format in the tests: lhotse
reads what ``w2v2-shard`` writes.
"""

INDEX = "index.json"
FORMAT = "w2v2-shards"
VERSION = 1
