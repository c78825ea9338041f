"""Manifests: fairseq's format both ways, deterministic splits, and every bad-input case."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import soundfile as sf
from helpers import rows as entries
from helpers import write_tone

from w2v2_pretrain.data.manifest import build_manifests
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.errors import DataError


def fairseq_load(path: Path) -> tuple[str, list[tuple[str, int]]]:
    """How fairseq's FileAudioDataset reads a manifest (root line, then exactly 2 columns)."""
    with open(path) as f:
        root = f.readline().strip()
        items = []
        for line in f:
            cols = line.strip().split("\t")
            assert len(cols) == 2, line
            items.append((cols[0], int(cols[1])))
    return root, items


def fairseq_write(root: Path, dest: Path, ext: str, valid_percent: float, seed: int) -> None:
    """What fairseq's examples/wav2vec/wav2vec_manifest.py writes (glob order, realpath root)."""
    import glob
    import random

    rand = random.Random(seed)
    dir_path = os.path.realpath(root)
    with open(dest / "train.tsv", "w") as tr, open(dest / "valid.tsv", "w") as va:
        print(dir_path, file=tr)
        print(dir_path, file=va)
        for fname in glob.iglob(os.path.join(dir_path, "**/*." + ext), recursive=True):
            file_path = os.path.realpath(fname)
            frames = sf.info(fname).frames
            out = tr if rand.random() > valid_percent else va
            print(f"{os.path.relpath(file_path, dir_path)}\t{frames}", file=out)


def test_written_manifest_is_fairseq_format(librispeech_tree, tmp_path):
    report = build_manifests(
        librispeech_tree, tmp_path / "m", valid_percent=0.25, seed=3, progress=False
    )
    assert report.train + report.valid == 24 and not report.skipped and not report.bad_files
    rows = []
    for split in ("train", "valid"):
        root, items = fairseq_load(tmp_path / "m" / f"{split}.tsv")
        assert root == str(librispeech_tree.resolve())
        for rel, n in items:
            assert not os.path.isabs(rel) and rel.count("/") == 2
            assert sf.info(os.path.join(root, rel)).frames == n
        rows += items
        # ours loads back identically
        ours = read_manifest(tmp_path / "m" / f"{split}.tsv")
        assert entries(ours) == items
    assert len(rows) == 24 and len({r for r, _ in rows}) == 24


def test_fairseq_written_manifest_loads(librispeech_tree, tmp_path):
    (tmp_path / "fs").mkdir()
    fairseq_write(librispeech_tree, tmp_path / "fs", "flac", 0.1, seed=42)
    m = read_manifest(tmp_path / "fs" / "train.tsv")
    _, items = fairseq_load(tmp_path / "fs" / "train.tsv")
    assert entries(m) == items
    assert m.audio_path(0).is_file()


def test_split_is_deterministic_and_stable(librispeech_tree, tmp_path):
    def split(seed, dest):
        build_manifests(librispeech_tree, dest, valid_percent=0.3, seed=seed, progress=False)
        return [(dest / f"{s}.tsv").read_text().splitlines()[1:] for s in ("train", "valid")]

    a, b, c = split(1, tmp_path / "a"), split(1, tmp_path / "b"), split(2, tmp_path / "c")
    assert a == b
    assert a != c
    assert a[0] == sorted(a[0])  # stable, sorted order
    assert 0 < len(a[1]) < 24


def test_length_filters_are_counted(librispeech_tree, tmp_path):
    report = build_manifests(
        librispeech_tree,
        tmp_path,
        valid_percent=0.0,
        min_seconds=1.0,
        max_seconds=2.5,
        progress=False,
    )
    assert report.valid == 0
    assert report.train + sum(report.skipped.values()) == 24
    assert report.skipped["shorter than --min-seconds"] > 0
    assert report.skipped["longer than --max-seconds"] > 0


def test_unreadable_files_are_reported_and_counted(librispeech_tree, tmp_path):
    (librispeech_tree / "19" / "198" / "19-198-9999.flac").write_bytes(b"not audio at all")
    (librispeech_tree / "26" / "495" / "26-495-9999.flac").write_bytes(b"")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2v2_pretrain.cli.manifest",
            str(librispeech_tree),
            "--dest",
            str(tmp_path / "m"),
            "--quiet",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "19-198-9999.flac: unreadable audio" in proc.stderr
    assert "26-495-9999.flac: unreadable audio" in proc.stderr
    assert "skipped 2 files or folders (2 unreadable; listed above)" in proc.stderr
    assert "Traceback" not in proc.stderr
    strict = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2v2_pretrain.cli.manifest",
            str(librispeech_tree),
            "--dest",
            str(tmp_path / "m2"),
            "--quiet",
            "--strict",
        ],
        capture_output=True,
        text=True,
    )
    assert strict.returncode == 1


def test_unreadable_directory_is_reported(librispeech_tree, tmp_path, monkeypatch):
    """A directory that cannot be listed is a counted skip naming it.

    Tests run as root, which reads a chmod-000 directory anyway, so the PermissionError that a
    normal user would get from ``os.scandir`` is raised for that one directory.
    """
    locked = librispeech_tree / "27"
    real = os.scandir

    def scandir(path):
        if Path(path) == locked:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(os, "scandir", scandir)
    report = build_manifests(librispeech_tree, tmp_path, progress=False)
    assert report.bad_files == [(str(locked), "cannot read directory: Permission denied")]
    assert report.train + report.valid == 16


def test_missing_root_is_one_line_error(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2v2_pretrain.cli.manifest",
            str(tmp_path / "nope"),
            "--dest",
            str(tmp_path / "m"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'nope'}: audio root does not exist or is not a directory"
    ]


def test_relative_root_resolves_against_manifest_folder(tmp_path):
    write_tone(tmp_path / "corpus" / "1" / "2" / "1-2-0000.flac", 1.0)
    man = tmp_path / "corpus" / "manifests"
    man.mkdir()
    (man / "train.tsv").write_text("..\n1/2/1-2-0000.flac\t16000\n")
    m = read_manifest(man / "train.tsv")
    assert m.root == (tmp_path / "corpus").resolve()
    assert m.audio_path(0).is_file()


@pytest.mark.parametrize(
    "body, message",
    [
        ("{root}\na.flac\n", ":2: expected 2 tab-separated columns (path, num_samples), found 1"),
        ("{root}\na.flac\t12\textra\n", ":2: expected 2 tab-separated columns"),
        ("{root}\na.flac\ttwelve\n", ":2: num_samples 'twelve' is not an integer"),
        ("{root}\na.flac\t0\n", ":2: num_samples must be positive"),
        ("{root}\na.flac\t-5\n", ":2: num_samples must be positive, got -5"),
        (
            "{root}\na.flac\t10\nb.flac\t10\n./a.flac\t10\n",
            ":4: './a.flac' is listed again (first at line 2)",
        ),
        ("{root}/missing_dir\na.flac\t10\n", ":1: root "),
        ("", ":1: first line must be the audio root directory"),
    ],
)
def test_malformed_manifest_names_line(tmp_path, body, message):
    path = tmp_path / "train.tsv"
    path.write_text(body.format(root=tmp_path))
    with pytest.raises(DataError) as e:
        read_manifest(path)
    assert str(path) in str(e.value) and message in str(e.value)
    assert "\n" not in str(e.value)


def test_committed_demo_manifests_load_from_any_clone():
    """data/manifests use a relative root, so they work wherever the repo is cloned."""
    from w2v2_pretrain.paths import REPO_ROOT as REPO

    for split in ("train", "valid"):
        m = read_manifest(REPO / "data" / "manifests" / f"{split}.tsv")
        assert m.root == (REPO / "data" / "demo").resolve()
        assert all(m.audio_path(i).is_file() for i in range(len(m)))
    train = read_manifest(REPO / "data" / "manifests" / "train.tsv")
    valid = read_manifest(REPO / "data" / "manifests" / "valid.tsv")
    assert len(train) + len(valid) >= 300
    assert sum(n for _, n in entries(train) + entries(valid)) / 16_000 >= 600


def test_demo_corpus_meets_its_spec():
    from w2v2_pretrain.paths import REPO_ROOT as REPO

    demo = REPO / "data" / "demo"
    flacs = sorted(demo.rglob("*.flac"))
    assert len(flacs) >= 300
    assert sum(p.stat().st_size for p in flacs) <= 20 * 1024 * 1024
    speakers = {p.relative_to(demo).parts[0] for p in flacs}
    assert len(speakers) >= 6
    infos = [sf.info(str(p)) for p in flacs]
    assert {(i.samplerate, i.channels) for i in infos} == {(16_000, 1)}
    assert sum(i.frames for i in infos) / 16_000 >= 600
    for chapter in {p.parent for p in flacs}:  # LibriSpeech layout and transcripts
        spk, ch = chapter.relative_to(demo).parts
        trans = (chapter / f"{spk}-{ch}.trans.txt").read_text().splitlines()
        assert {t.split()[0] for t in trans} == {p.stem for p in chapter.glob("*.flac")}


def test_manifest_parsed_in_chunks_equals_line_by_line(tmp_path, monkeypatch):
    """The vectorised parse, over chunk boundaries, reads what a line-by-line reading does:
    a byte-order mark, CRLF and LF line ends, blank lines, ``./`` spellings, non-ASCII names,
    and a repeat spelled differently is still found."""
    import w2v2_pretrain.data.tsv as tsv

    (tmp_path / "a").mkdir()
    rows = [(f"a/{i:04d}-ü.flac" if i % 7 else f"./a/{i}.flac", 1000 + i) for i in range(300)]
    text = "".join(f"{p}\t{n}\r\n" if i % 3 else f"{p}\t{n}\n\n" for i, (p, n) in enumerate(rows))
    path = tmp_path / "train.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{tmp_path}\r\n{text}".encode())
    monkeypatch.setattr(tsv, "_CHUNK", 97)  # many chunks, boundaries inside lines
    m = read_manifest(path)
    assert m.root == tmp_path.resolve() and len(m) == 300
    assert entries(m) == rows
    lines = [n for n, line in enumerate(f"{tmp_path}\n{text}".splitlines(), 1) if line]
    assert m.lines.tolist() == lines[1:]
    path.write_text(f"{tmp_path}\n{text}a/0003-ü.flac\t5\n")
    with pytest.raises(DataError, match=r"'a/0003-ü.flac' is listed again \(first at line 6\)"):
        read_manifest(path)
    path.write_text(f"{tmp_path}\n{text}a//0.flac\t5\n")
    with pytest.raises(DataError, match=r"'a//0.flac' is listed again \(first at line 2\)"):
        read_manifest(path)


def test_a_repeat_is_found_past_a_path_of_the_same_hash(tmp_path):
    """The duplicate check sorts by a 32-bit hash of each path: two different paths that share
    one, with a repeat of the first after the second, are told apart and the repeat named."""
    import w2v2_pretrain.data.tsv as tsv

    a, b = "spk/iygkkqyghsjdsrtz.flac", "spk/qygsilhixbokhoyf.flac"
    assert tsv._key_of(a) == tsv._key_of(b)  # the collision this test is about
    path = tmp_path / "train.tsv"
    path.write_text(f"{tmp_path}\n{a}\t5\n{b}\t5\n")
    assert entries(read_manifest(path)) == [(a, 5), (b, 5)]
    path.write_text(f"{tmp_path}\n{a}\t5\n{b}\t5\n{a}\t5\n")
    with pytest.raises(
        DataError, match=rf"train.tsv:4: '{a}' is listed again \(first at line 2\)"
    ):
        read_manifest(path)


def test_linked_sub_folder_and_fairseq_dotdot_lines_load(tmp_path):
    """A corpus assembled from links: a sub-folder and a file of the root that are symbolic
    links to another disk are inside the root (the check is lexical, links are not resolved),
    and the ``../`` lines fairseq writes for them (relpath of the real path) load too. A line
    naming no audio file is a bad file named with its line, not a crash or a silent read."""
    from w2v2_pretrain.data.verify import check_manifest

    elsewhere = tmp_path / "disk2" / "spk"
    n = len(write_tone(elsewhere / "a.flac", 0.5))
    write_tone(tmp_path / "disk2" / "b.flac", 0.5, seed=1)
    root = tmp_path / "corpus"
    root.mkdir()
    (root / "spk").symlink_to(elsewhere, target_is_directory=True)
    (root / "b.flac").symlink_to(tmp_path / "disk2" / "b.flac")
    ours = tmp_path / "ours.tsv"
    ours.write_text(f"{root}\nspk/a.flac\t{n}\nb.flac\t{n}\n")
    m = read_manifest(ours)
    assert not m.outside.any() and len(check_manifest(m, 0, 400)[0]) == 2
    fairseq = tmp_path / "fairseq.tsv"  # what wav2vec_manifest.py writes for the same tree
    lines = [os.path.relpath(os.path.realpath(root / p), root) for p in ("spk/a.flac", "b.flac")]
    fairseq.write_text(
        f"{root}\n" + "".join(f"{p}\t{n}\n" for p in lines) + "../../etc/passwd\t10\n"
    )
    m = read_manifest(fairseq)
    assert lines[0].startswith("../") and m.outside.tolist() == [True, True, True]
    kept, dropped, skipped = check_manifest(m, 0, 400, on_bad_file="skip")
    assert len(kept) == 2 and len(skipped) == 1
    assert skipped[0].startswith(f"{fairseq}:4 ({root}/../../etc/passwd): ")
    with pytest.raises(DataError, match=r"fairseq.tsv:4 \(.*etc/passwd\): "):
        check_manifest(m, 0, 400)


def manifest_cli(root: Path, dest: Path, *args: str, timeout: float = 60):
    return subprocess.run(
        [sys.executable, "-m", "w2v2_pretrain.cli.manifest", str(root), "--dest", str(dest)]
        + ["--quiet", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_walk_visits_each_folder_once_and_follows_links(tmp_path):
    """Links to folders and files elsewhere are followed; a loop is one line and not followed;
    two loop links end at once (they made the walk exponential); a second link to a folder or
    file already listed is left out, so no file is listed twice."""
    root = tmp_path / "corpus"
    for i in range(3):
        write_tone(root / "1" / "2" / f"1-2-{i}.flac", 0.5, seed=i)
    write_tone(tmp_path / "elsewhere" / "3" / "3-1-0.flac", 0.5)
    os.symlink("..", root / "1" / "loop")
    os.symlink("../..", root / "1" / "2" / "loop2")
    os.symlink(tmp_path / "elsewhere", root / "linked")
    os.symlink(tmp_path / "elsewhere", root / "linked_again")
    os.symlink(root / "1" / "2" / "1-2-0.flac", root / "1-2-0-link.flac")
    proc = manifest_cli(root, tmp_path / "m", "--valid-percent", "0", timeout=20)
    assert proc.returncode == 0, proc.stderr
    rows = [r.split("\t")[0] for r in (tmp_path / "m" / "train.tsv").read_text().splitlines()[1:]]
    assert rows == ["1/2/1-2-0.flac", "1/2/1-2-1.flac", "1/2/1-2-2.flac", "linked/3/3-1-0.flac"]
    err = proc.stderr.splitlines()
    assert [x for x in err if "symbolic link loop" in x] == [
        f"skipped {root / '1' / 'loop'}: symbolic link loop: points to {root}, a folder that "
        "holds the link; not followed",
        f"skipped {root / '1' / '2' / 'loop2'}: symbolic link loop: points to {root}, a folder "
        "that holds the link; not followed",
    ]
    assert f"skipped {root / 'linked_again'}: links to a folder already listed as" in proc.stderr
    assert f"{root / '1-2-0-link.flac'}: the same file as {root / '1/2/1-2-0.flac'}" in proc.stderr
    assert err[-1] == "skipped 4 files or folders (2 duplicate, 2 symlink loop; listed above)"


def test_walk_skips_special_files_and_names_a_manifest_cannot_hold(tmp_path):
    """A FIFO named .flac (opening it would wait forever), a broken link, and names with a
    newline, a tab or bytes that are not UTF-8: each skipped with its reason, never written."""
    root = tmp_path / "corpus"
    good = root / "1" / "good.flac"
    write_tone(good, 0.5)
    os.mkfifo(root / "1" / "fifo.flac")
    os.symlink(tmp_path / "gone.flac", root / "1" / "broken.flac")
    for name in (b"new\nline.flac", b"tab\there.flac", b"latin1-\xe9.flac", b"dir\tx"):
        path = os.fsencode(root / "1") + b"/" + name
        if name == b"dir\tx":
            os.mkdir(path)
            path += b"/inside.flac"
        with open(path, "wb") as f:
            f.write(good.read_bytes())
    proc = manifest_cli(root, tmp_path / "m", "--valid-percent", "0", timeout=20)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m" / "train.tsv").read_text() == f"{root}\n1/good.flac\t8000\n"
    err = proc.stderr
    assert f"skipped {root}/1/fifo.flac: not a regular file (FIFO)" in err
    assert f"skipped {root}/1/broken.flac: symbolic link to a missing file" in err
    cannot_hold = "its name holds a tab or line break, which a manifest line cannot hold"
    for shown_name in ("new\\nline.flac", "tab\\there.flac", "dir\\tx"):
        assert f"skipped {root}/1/{shown_name}: {cannot_hold}" in err
    assert f"skipped {root}/1/latin1-\\xe9.flac: its name is not valid UTF-8" in err
    assert "unreadable audio" not in err
    assert err.splitlines()[-1] == (
        "skipped 6 files or folders (4 bad name, 1 broken link, 1 not a regular file; "
        "listed above)"
    )
    assert manifest_cli(root, tmp_path / "m2", "--strict").returncode == 1


@pytest.mark.parametrize("where", ["a file", "under a file", "sysfs"])
def test_dest_that_cannot_hold_manifests_is_one_line(librispeech_tree, tmp_path, capsys, where):
    """``--dest`` that is a file, under a file, or not writable. Tests run as root, which
    chmod does not stop, so "not writable" is /sys, where the kernel refuses even root."""
    from w2v2_pretrain.cli.manifest import main

    (tmp_path / "file").write_text("x")
    dest, cause = {
        "a file": (tmp_path / "file", "is a file, not a folder"),
        "under a file": (
            tmp_path / "file" / "m",
            f"cannot write there: {tmp_path}/file is a file",
        ),
        "sysfs": (Path("/sys/w2v2-manifests"), "cannot write there: Operation not permitted"),
    }[where]
    if where == "sysfs" and not Path("/sys/kernel").is_dir():
        pytest.skip("no sysfs here")
    with pytest.raises(SystemExit) as e:
        main([str(librispeech_tree), "--dest", str(dest), "--quiet"])
    assert e.value.code == 2
    assert capsys.readouterr().err.splitlines() == [f"error: --dest {dest}: {cause}"]
