"""The set-up check: each kind of bad file named with its manifest line or skipped and counted,
the verify record reused and checked against the files, one stat per file in one process or
several, and one scan for all DDP ranks."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    manifest_of,
    paths,
    write_tone,
)

from w2v2_pretrain.data.collate import Collator
from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.data.datamodule import AudioDataModule
from w2v2_pretrain.data.dataset import AudioDataset, BadFile
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.data.verify import check_manifest
from w2v2_pretrain.errors import DataError


def broken_corpus(tmp_path):
    """One good file and one of each kind of bad file, with a manifest naming them all."""
    root = tmp_path / "audio"
    good = write_tone(root / "good.flac", 1.0)
    write_tone(root / "trunc.flac", 2.0, seed=1)
    raw = (root / "trunc.flac").read_bytes()
    (root / "trunc.flac").write_bytes(raw[: len(raw) // 3])
    (root / "text.flac").write_text("hello, I am not audio\n")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    write_tone(root / "tiny.flac", 0.01)
    write_tone(root / "other.flac", 1.0)
    write_tone(root / "trunc.wav", 2.0, seed=2)
    raw = (root / "trunc.wav").read_bytes()
    (root / "trunc.wav").write_bytes(raw[: len(raw) // 2])
    rows = {
        "good.flac": len(good),
        "missing.flac": 16_000,
        "trunc.flac": 32_000,
        "text.flac": 16_000,
        "empty.wav": 16_000,
        "tiny.flac": 160,
        "other.flac": 12_345,
        "trunc.wav": 32_000,
    }
    path = tmp_path / "train.tsv"
    path.write_text(f"{root}\n" + "".join(f"{k}\t{v}\n" for k, v in rows.items()))
    return read_manifest(path)


@pytest.mark.parametrize(
    "name, line, cause",
    [
        ("missing.flac", 3, "file not found"),
        ("trunc.wav", 9, "manifest says 32000 samples but the file has"),
        ("text.flac", 5, "unreadable audio"),
        ("empty.wav", 6, "empty audio (0 samples)"),
        ("tiny.flac", 7, "shorter than the feature encoder's receptive field (400 samples)"),
        ("other.flac", 8, "manifest says 12345 samples but the file has 16000"),
    ],
)
def test_each_bad_file_is_named(tmp_path, name, line, cause):
    m = broken_corpus(tmp_path)
    keep = [0] + [i for i, p in enumerate(paths(m)) if p == name]
    with pytest.raises(DataError) as e:
        check_manifest(m.select(keep), 0, 400)
    msg = str(e.value)
    assert f"train.tsv:{line} (" in msg and name in msg and cause in msg and "\n" not in msg


def test_truncated_flac_is_caught_when_decoded(tmp_path):
    """A FLAC cut short keeps its header (the header pass cannot tell): verify=decode finds it
    at setup, and the dataset reports it as a bad file instead of raising in a worker."""
    m = broken_corpus(tmp_path)
    i = paths(m).index("trunc.flac")
    check_manifest(m.select([i]), 0, 400)  # the header pass cannot tell
    with pytest.raises(DataError, match=r"train.tsv:4 .*trunc.flac\): cannot be decoded"):
        check_manifest(m.select([i]), 0, 400, verify="decode")
    bad = AudioDataset(m)[i]
    assert isinstance(bad, BadFile) and "train.tsv:4" in bad.where
    assert bad.reason.startswith("unreadable audio")


def test_decode_check_finds_nan_and_silent_audio(tmp_path):
    root = tmp_path / "audio"
    write_tone(root / "good.flac", 1.0)
    sf.write(root / "nan.wav", np.full(16_000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    sf.write(root / "inf.wav", np.full(16_000, np.inf, dtype=np.float32), 16_000, subtype="FLOAT")
    sf.write(root / "zero.flac", np.zeros(16_000, dtype=np.float32), 16_000)
    (tmp_path / "train.tsv").write_text(
        f"{root}\n"
        + "".join(f"{n}\t16000\n" for n in ("good.flac", "nan.wav", "inf.wav", "zero.flac"))
    )
    m = read_manifest(tmp_path / "train.tsv")
    kept, skipped, bad_files = check_manifest(m, 0, 400, verify="header", on_bad_file="skip")
    assert len(kept) == 4 and not skipped  # headers are fine
    kept, skipped, bad_files = check_manifest(m, 0, 400, verify="decode", on_bad_file="skip")
    assert paths(kept) == ["good.flac"]
    assert skipped == {"non-finite": 2, "silent": 1}
    assert any("nan.wav): contains NaN or Inf samples" in s for s in bad_files)
    assert any("zero.flac): all-zero audio" in s for s in bad_files)
    # met in training instead (no decode check): skipped from the batch and named
    ds = AudioDataset(m)
    batch = Collator("pad")([ds[i] for i in range(4)])
    assert batch.ids.tolist() == [0] and len(batch.bad_files) == 3


def test_skip_policy_counts_each_reason(tmp_path):
    m = broken_corpus(tmp_path)
    kept, skipped, bad_files = check_manifest(m, 0, 400, on_bad_file="skip")
    # trunc.flac's header is intact: it passes the header pass and is skipped when decoded
    assert paths(kept) == ["good.flac", "trunc.flac"]
    assert skipped == {
        "missing": 1,
        "unreadable": 1,
        "empty": 1,
        "too short": 1,
        "wrong length": 2,
    }
    assert len(bad_files) == 6 and all("train.tsv:" in s for s in bad_files)
    ds = AudioDataset(kept)
    batch = Collator("pad")([ds[0], ds[1]])
    assert batch.ids.tolist() == [0] and batch.source.shape == (1, 16_000)
    assert len(batch.bad_files) == 1 and "trunc.flac): unreadable audio" in batch.bad_files[0]


def test_min_sample_size_skips_are_counted(tmp_path):
    m = manifest_of(tmp_path, {"a.flac": 1.0, "b.flac": 3.0, "c.flac": 0.5})
    kept, skipped, _ = check_manifest(m, 20_000, 400)
    assert paths(kept) == ["b.flac"]
    assert skipped == {"shorter than min_sample_size=20000": 2}


def test_verify_record_is_reused_and_notices_replaced_or_truncated_files(tmp_path):
    """The first set-up's header scan is recorded beside the manifest; the next set-up reads
    it instead of scanning, and a file replaced or truncated since is checked again."""
    from w2v2_pretrain.data import record, scan

    m = manifest_of(tmp_path, {f"{i}.flac": 1.0 for i in range(4)})
    (tmp_path / "valid.tsv").write_text((tmp_path / "train.tsv").read_text())
    cfg = DataConfig(manifest_dir=str(tmp_path), min_sample_size=0, max_sample_size=16_000)
    checked = []
    real = scan.inspect_audio

    def counting(path, decode=False):
        checked.append(path)
        return real(path, decode=decode)

    scan.inspect_audio = counting
    try:
        AudioDataModule(cfg).setup("fit")
        assert len(checked) == 8 and record.record_path(m.source).is_file()
        checked.clear()
        AudioDataModule(cfg).setup("fit")  # a second start: no scan
        assert checked == []
        write_tone(m.root / "1.flac", 0.5, seed=9)  # replaced by a shorter file
        raw = (m.root / "2.flac").read_bytes()
        (m.root / "2.flac").write_bytes(raw[:20])  # truncated
        cfg.on_bad_file = "skip"
        dm = AudioDataModule(cfg)
        dm.setup("fit")
        assert sorted(Path(p).name for p in checked) == ["1.flac", "1.flac", "2.flac", "2.flac"]
        assert len(dm.datasets["train"]) == 2 and dm.skipped["train"] == {
            "wrong length": 1,
            "unreadable": 1,
        }
    finally:
        scan.inspect_audio = real


@pytest.mark.parametrize("fork_from", [10**9, 2])
def test_stat_files_agrees_with_os_stat_in_one_or_several_processes(
    tmp_path, monkeypatch, fork_from
):
    """Each entry's size, modification time and kind, also when the entries are split across
    forked processes (and when a child fails, its part is done by the parent)."""
    from w2v2_pretrain.data import scan

    monkeypatch.setattr(scan, "_FORK_FROM", fork_from)
    monkeypatch.setattr(scan, "_STAT_BLOCK", 4 if fork_from == 2 else 1 << 16)  # blocks too
    m = manifest_of(tmp_path, {f"d/{i}.flac": 0.1 * (1 + i % 3) for i in range(9)})
    (m.root / "d" / "3.flac").unlink()
    os.remove(m.root / "d" / "5.flac")
    (m.root / "d" / "5.flac").mkdir()
    found = scan.stat_files(m)
    for i in range(len(m)):
        path = m.audio_path(i)
        if not path.exists():
            assert (found.sizes[i], found.mtimes[i], found.kinds[i]) == (-1, 0, scan.MISSING)
            continue
        st = path.stat()
        kind = scan.REGULAR if path.is_file() else scan.OTHER
        assert (found.sizes[i], found.mtimes[i], found.kinds[i]) == (
            st.st_size,
            st.st_mtime_ns,
            kind,
        )
    part = scan.stat_files(m, np.array([8, 3, 0]))
    np.testing.assert_array_equal(part.sizes, found.sizes[[8, 3, 0]])
    real = scan._stat_rows
    parent = os.getpid()

    def failing_child(manifest, lo, hi, out):
        if os.getpid() != parent:
            raise OSError("child failed")
        real(manifest, lo, hi, out)

    monkeypatch.setattr(scan, "_stat_rows", failing_child)
    again = scan.stat_files(m)
    np.testing.assert_array_equal(again.mtimes, found.mtimes)
    np.testing.assert_array_equal(again.kinds, found.kinds)


def _ddp_setup(rank: int, world: int, folder: str, port: int, out: str) -> None:
    """One DDP rank: set the data up, and write how many files this rank checked."""
    import torch.distributed as dist

    from w2v2_pretrain.data import scan

    checked = []
    real = scan.inspect_audio
    scan.inspect_audio = lambda path, decode=False: checked.append(path) or real(path, decode)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cfg = DataConfig(manifest_dir=folder, min_sample_size=0, max_sample_size=16_000)
        dm = AudioDataModule(cfg)
        dm.setup("fit")
        Path(out, f"rank{rank}").write_text(f"{len(checked)} {len(dm.datasets['train'])}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_scan_the_corpus_once(tmp_path):
    """Under DDP rank 0 scans and records; the other ranks wait and read its record."""
    import socket

    import torch.multiprocessing as mp

    manifest_of(tmp_path, {f"{i}.flac": 1.0 for i in range(6)})
    (tmp_path / "valid.tsv").write_text((tmp_path / "train.tsv").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _ddp_setup, args=(2, str(tmp_path), port, str(tmp_path)), nprocs=2, start_method="fork"
    )
    assert (tmp_path / "rank0").read_text() == "12 6"  # train and valid, once
    assert (tmp_path / "rank1").read_text() == "0 6"
