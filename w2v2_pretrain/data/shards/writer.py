"""Writing a manifest folder's splits as lhotse Shar shards (``w2v2-shard``); reading is in
reader.py.

Per split: the usable entries (`check_manifest`, as training checks them) are dealt to shards
at random (seeded), each shard's utterances sorted by length (so that a length-bucketed batch
is a run of consecutive members), each decoded in full (a file that fails to decode, holds
NaN/Inf or only zeros is skipped and counted, as ``data.on_bad_file=skip`` would) and written
as ``<id>.flac`` + ``<id>.json`` members of ``recording.NNNNNN.tar`` with its cut in
``cuts.NNNNNN.jsonl.gz``: the layout of ``lhotse.CutSet.to_shar``. A FLAC file at the target
rate, mono, goes in byte for byte; anything else is resampled / downmixed and encoded as 16-bit
FLAC. Every file is written under a temporary name and renamed when complete, ``index.json``
last: an interrupted run leaves no index, and nothing a run would read.
"""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.data.audio import read_audio, sample_problem
from w2v2_pretrain.data.config import VerifyLevel
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.parallel import in_threads
from w2v2_pretrain.data.shards import FORMAT, INDEX, VERSION
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.data.verify import check_manifest
from w2v2_pretrain.errors import DataError

SPLITS = ("train", "valid")


@dataclass
class SplitReport:
    """What became of one split: utterances and seconds written, shards, and what was skipped
    (counted by reason, the bad files among it also named ``where: reason``)."""

    utterances: int = 0
    seconds: float = 0.0
    shards: int = 0
    bad_files: list[str] = field(default_factory=list)
    skipped: Counter = field(default_factory=Counter)


def _ids(manifest: Manifest) -> list[str]:
    """A member name per entry: the file's stem (LibriSpeech's are unique), or, where stems
    repeat, the path without its extension with ``/`` as ``__``."""
    paths = [manifest.path(i) for i in range(len(manifest))]
    stems = [Path(p).stem for p in paths]
    if len(set(stems)) == len(stems):
        return stems
    return [str(Path(p).with_suffix("")).replace("/", "__") for p in paths]


def _cut(uid: str, num_samples: int, rate: int) -> dict:
    """The lhotse ``MonoCut`` of one whole recording held in the shard."""
    seconds = num_samples / rate
    recording = {
        "id": uid,
        "sources": [{"type": "shar", "channels": [0], "source": ""}],
        "sampling_rate": rate,
        "num_samples": num_samples,
        "duration": seconds,
        "channel_ids": [0],
    }
    return {
        "id": uid,
        "start": 0,
        "duration": seconds,
        "channel": 0,
        "supervisions": [],
        "recording": recording,
        "type": "MonoCut",
    }


def _member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)  # mtime, uid, ... 0: the same input writes the same bytes
    tar.addfile(info, io.BytesIO(data))


class _Skip(Exception):
    """An entry that cannot be learned from: its kind (for counts) and ``where: reason``."""

    def __init__(self, kind: str, entry: str) -> None:
        super().__init__(entry)
        self.kind, self.entry = kind, entry


def _encode(manifest: Manifest, i: int, rate: int) -> tuple[bytes, int]:
    """The FLAC bytes of entry ``i`` at ``rate`` (mono) and their length; `_Skip` when it
    cannot be learned from."""
    where = manifest.where(i)
    path = manifest.audio_path(i)
    try:
        wav = read_audio(path, rate, expected_samples=int(manifest.num_samples[i]), where=where)
    except DataError as e:
        raise _Skip("unreadable", str(e)) from None
    problem = sample_problem(wav)
    if problem is not None:
        raise _Skip(problem.kind, f"{where}: {problem.detail}")
    info = sf.info(str(path))
    if info.format == "FLAC" and info.samplerate == rate and info.channels == 1:
        return path.read_bytes(), len(wav)
    out = io.BytesIO()
    sf.write(out, wav, rate, format="FLAC", subtype="PCM_16")
    return out.getvalue(), len(wav)


def _write_shard(
    manifest: Manifest, members: np.ndarray, ids: list[str], folder: Path, k: int, rate: int
) -> tuple[list[str], list[int], list[tuple[str, str]]]:
    """Shard ``k`` of ``members`` (entry indices, in member order): its ids and lengths as
    written, and the entries skipped (kind, ``where: reason``)."""
    written, lengths, skipped = [], [], []
    tar_path = folder / f"recording.{k:06d}.tar"
    with atomic_open(tar_path, "wb") as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for i in members.tolist():
            try:
                data, n = _encode(manifest, i, rate)
            except _Skip as e:
                skipped.append((e.kind, e.entry))
                continue
            uid = ids[i]
            meta = json.dumps(_cut(uid, n, rate)["recording"]).encode() + b"\n"
            _member(tar, f"{uid}.flac", data)
            _member(tar, f"{uid}.json", meta)
            written.append(uid)
            lengths.append(n)
    cuts = folder / f"cuts.{k:06d}.jsonl.gz"
    with atomic_open(cuts, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as gz:
        for uid, n in zip(written, lengths, strict=True):
            gz.write(json.dumps(_cut(uid, n, rate)).encode() + b"\n")
    return written, lengths, skipped


@dataclass(frozen=True)
class _Options:
    """How `write_shards` writes: the rate, what counts as too short, threads, progress bars."""

    sample_rate: int
    min_sample_size: int
    receptive_field: int
    workers: int
    progress: bool


def write_shards(
    manifest_dir: str | Path,
    dest: str | Path,
    *,
    shard_size: int = 1000,
    seed: int = 1,
    sample_rate: int = 16_000,
    min_sample_size: int = 0,
    receptive_field: int = 400,
    workers: int = 4,
    progress: bool = True,
) -> dict[str, SplitReport]:
    """Write ``manifest_dir``'s ``train.tsv`` and ``valid.tsv`` as shards under ``dest``, with
    ``dest/index.json``; what became of each split."""
    if shard_size < 1:
        raise DataError(f"--shard-size: must be positive, got {shard_size}")
    source, dest = Path(manifest_dir), Path(dest)
    if (dest / INDEX).exists():
        raise DataError(f"{dest / INDEX}: shards are already there; choose another --dest")
    opts = _Options(sample_rate, min_sample_size, receptive_field, workers, progress)
    index = {"format": FORMAT, "version": VERSION, "sample_rate": sample_rate, "splits": {}}
    reports = {}
    for split in SPLITS:
        path = source / f"{split}.tsv"
        if not path.is_file():
            raise DataError(f"{path}: no such manifest (w2v2-manifest writes train and valid)")
        report = reports[split] = SplitReport()
        manifest = _usable(read_manifest(path), report, opts)
        parts = _deal(manifest, shard_size, (seed, SPLITS.index(split)), sample_rate)
        shards = _write_split(manifest, parts, dest / split, opts, report)
        # index.json's own keys (version 1): "skipped" names the bad files, "dropped" counts
        index["splits"][split] = {
            "shards": shards,
            "skipped": report.bad_files,
            "dropped": dict(report.skipped),
        }
    with atomic_open(dest / INDEX, "w") as f:
        json.dump(index, f)
    return reports


def _usable(manifest: Manifest, report: SplitReport, opts: _Options) -> Manifest:
    """The entries training would use (every header read; bad files skipped, into ``report``)."""
    if not len(manifest):
        return manifest
    manifest, skipped, bad_files = check_manifest(
        manifest,
        opts.min_sample_size,
        opts.receptive_field,
        verify=VerifyLevel.header,
        on_bad_file="skip",
        sample_rate=opts.sample_rate,
        workers=opts.workers,
        progress=opts.progress,
    )
    report.skipped.update(skipped)
    report.bad_files += bad_files
    return manifest


def _deal(
    manifest: Manifest, shard_size: int, seed: tuple[int, int], sample_rate: int
) -> list[np.ndarray]:
    """The entries dealt to shards at random, each shard's sorted by length."""
    lengths = manifest.samples_at(sample_rate)
    order = np.random.default_rng(seed).permutation(len(manifest))
    parts = [order[i : i + shard_size] for i in range(0, len(order), shard_size)]
    return [p[np.argsort(lengths[p], kind="stable")] for p in parts]


def _write_split(
    manifest: Manifest, parts: list[np.ndarray], folder: Path, opts: _Options, report: SplitReport
) -> list[dict]:
    """Every shard of one split into ``folder``, in parallel threads; their index entries."""
    folder.mkdir(parents=True, exist_ok=True)
    split, rate, ids = folder.name, opts.sample_rate, _ids(manifest)

    def write(job: tuple[int, np.ndarray]) -> tuple[list[str], list[int], list]:
        return _write_shard(manifest, job[1], ids, folder, job[0], rate)

    title = f"{split} shards" if opts.progress else None
    done = in_threads(write, list(enumerate(parts)), opts.workers, title, unit="shard")
    shards = []
    for k, (written, lengths, bad) in enumerate(done):
        for kind, entry in bad:
            report.bad_files.append(entry)
            report.skipped[kind] += 1
        report.utterances += len(written)
        report.seconds += sum(lengths) / rate
        shards.append(
            {
                "recording": f"{split}/recording.{k:06d}.tar",
                "cuts": f"{split}/cuts.{k:06d}.jsonl.gz",
                "ids": written,
                "num_samples": lengths,
            }
        )
    report.shards = len(shards)
    return shards
