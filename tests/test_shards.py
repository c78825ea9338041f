"""Sharded audio: w2v2-shard's shards (lhotse Shar), their batch plan, training from a folder
and over HTTP (a server that drops connections, one that dies mid-epoch), exact resume."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO_ROOT, compose_cfg, messy_corpus, run_cli, scalars, small_manifests
from runs import RESUMABLE, same_curve, start, wait_for

from w2v2_pretrain.data.audio import read_audio
from w2v2_pretrain.data.shards.index import read_index
from w2v2_pretrain.data.shards.plan import ShardBatchSampler
from w2v2_pretrain.data.shards.writer import write_shards
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.train import train

SHARD_CLI = [sys.executable, "-m", "w2v2_pretrain.cli.shard"]


def shard_args(location) -> list[str]:
    return ["data.manifest_dir=null", f"data.shards={location}"]


@pytest.fixture(scope="module")
def demo_shards(tmp_path_factory):
    """12 demo utterances (as the manifest resume tests use) in 4 shards of 3, and the
    uninterrupted 14-update run on them with two loader workers."""
    tmp = tmp_path_factory.mktemp("shards")
    write_shards(small_manifests(tmp, 12), tmp / "shards", shard_size=3, progress=False)
    overrides = [*RESUMABLE, *shard_args(tmp / "shards"), "data.num_workers=2"]
    result = train(compose_cfg([*overrides, "trainer.max_steps=14"], tmp / "run"))
    assert result.global_step == 14
    return tmp / "shards", scalars(tmp / "run")


@pytest.fixture
def server(tmp_path):
    """Start tests/shard_server.py on a folder: ``server(root, mode, *args) -> base URL``."""
    procs = []

    def serve(root: Path, mode: str = "serve", *args: str) -> str:
        port_file = tmp_path / f"port{len(procs)}"
        script = Path(__file__).parent / "shard_server.py"
        proc = subprocess.Popen(
            [sys.executable, str(script), str(root), str(port_file), mode, *args]
        )
        procs.append(proc)
        deadline = time.monotonic() + 30
        while not port_file.is_file():
            assert proc.poll() is None and time.monotonic() < deadline, "no server"
            time.sleep(0.05)
        return f"http://127.0.0.1:{port_file.read_text()}"

    yield serve
    for proc in procs:
        proc.kill()
        proc.wait()


def test_w2v2_shard_writes_lhotse_shar_and_counts_bad_files_as_w2v2_manifest(tmp_path, capsys):
    """Every good file of a messy corpus is in the shards, as 16-kHz mono FLAC equal to what
    training reads from the file; the bad ones are skipped, named and counted by reason; each
    shard is sorted by length; lhotse reads the shards back."""
    manifests = messy_corpus(tmp_path)
    dest = tmp_path / "shards"
    proc = subprocess.run(
        [*SHARD_CLI, str(manifests), "--dest", str(dest), "--shard-size", "3", "--quiet"],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert "train: 10 utterances" in proc.stdout and "in 5 shards" in proc.stdout
    for reason, n in (("unreadable", 3), ("non-finite", 2), ("silent", 1), ("missing", 1)):
        assert f"train: skipped {n} ({reason})" in proc.stdout
    named = [line for line in proc.stderr.splitlines() if line.startswith("skipped /")]
    assert len(named) == 9 and "skipped 9 files" in proc.stderr
    assert any("train.tsv:18 " in line and "NaN or Inf" in line for line in named)

    train = read_index(str(dest), "train")
    manifest = read_manifest(manifests / "train.tsv")
    by_id = {
        str(Path(manifest.path(i)).with_suffix("")).replace("/", "__"): i
        for i in range(len(manifest))
    }
    assert sorted(train.ids) == sorted(k for k in by_id if k.startswith(("c0_", "c1_")))
    for s in range(len(train.shards)):
        lengths = train.num_samples[train.shard == s]
        assert (np.diff(lengths) >= 0).all()

    from lhotse import CutSet

    cuts = {cut.id: cut for cut in CutSet.from_shar(in_dir=str(dest / "train"))}
    assert sorted(cuts) == sorted(train.ids)
    for uid, cut in cuts.items():
        wav = cut.load_audio()[0]
        want = read_audio(manifest.audio_path(by_id[uid]), 16_000)
        assert cut.sampling_rate == 16_000 and len(wav) == len(want) == cut.num_samples
        # 16-kHz FLAC goes in byte for byte; other files are encoded as 16-bit FLAC
        tol = 0 if uid.endswith("good") else 1.01 / 32768
        np.testing.assert_allclose(wav, want, rtol=0, atol=tol)

    from w2v2_pretrain.cli.shard import main  # the same entry point, in this process

    with pytest.raises(SystemExit) as again:
        main([str(manifests), "--dest", str(dest), "--quiet"])
    assert again.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1].startswith(f"error: {dest / 'index.json'}:")
    with pytest.raises(SystemExit) as strict:
        main([str(manifests), "--dest", str(tmp_path / "s2"), "--strict", "--quiet"])
    assert strict.value.code == 1


def _plan_case(rng, shards: int, replicas: int, workers: int, weights=None):
    counts = rng.integers(5, 40, size=shards)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    sizes = np.concatenate([np.sort(rng.integers(2_000, 40_000, size=c)) for c in counts])
    corpus = (np.arange(shards) >= shards // 2).astype(np.int64) if weights else np.zeros(shards)
    samplers = [
        ShardBatchSampler(
            sizes,
            100_000,
            bounds,
            corpus,
            workers=workers,
            num_replicas=replicas,
            rank=r,
            seed=3,
            weights=weights,
        )
        for r in range(replicas)
    ]
    return sizes, bounds, samplers


@pytest.mark.parametrize(("shards", "replicas", "workers"), [(9, 2, 3), (13, 1, 2), (3, 2, 2)])
def test_shard_plan_reads_each_shard_as_one_stream_under_the_budget(shards, replicas, workers):
    """Every utterance once per epoch; batches under the budget, each a run of consecutive
    members of one shard; ranks get as many batches each, disjoint; a rank's batch k comes
    from its stream k % workers, and each shard is read by one stream only (fewer shards than
    streams: a shard's batches may be shared out)."""
    rng = np.random.default_rng(shards)
    sizes, bounds, samplers = _plan_case(rng, shards, replicas, workers)
    for epoch in (0, 1):
        per_rank = []
        for s in samplers:
            s.set_epoch(epoch)
            per_rank.append(list(s))
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == len(samplers[0])
        seen = [i for batches in per_rank for batch in batches for i, _, _ in batch]
        assert sorted(seen) == list(range(len(sizes)))
        readers: dict[int, set] = {}
        for r, batches in enumerate(per_rank):
            for k, batch in enumerate(batches):
                idx = np.array([i for i, _, _ in batch])
                assert len(idx) * sizes[idx].max() <= 100_000
                shard = np.searchsorted(bounds, idx, side="right") - 1
                assert (shard == shard[0]).all() and (np.diff(idx) == 1).all()
                readers.setdefault(int(shard[0]), set()).add((r, k % workers))
        shared = sum(len(streams) > 1 for streams in readers.values())
        assert shared == 0 if shards >= 4 * replicas * workers else shared < replicas * workers
    first = samplers[0]
    first.set_epoch(1)
    whole = list(first)
    first.resume(1, 2)
    assert list(first) == whole[2:]


def test_shard_plan_draws_each_corpus_by_its_weight():
    """With weights, each corpus's shards are drawn as often as its share asks (an upsampled
    shard's copies are numbered)."""
    rng = np.random.default_rng(0)
    sizes, bounds, (sampler,) = _plan_case(rng, 12, 1, 2, weights=[3.0, 1.0])
    sampler.set_epoch(0)
    batches = list(sampler)
    shard = [int(np.searchsorted(bounds, b[0][0], side="right") - 1) for b in batches]
    members = np.array([len(b) for b in batches])
    first = np.array([s < 6 for s in shard])
    share = members[first].sum() / members.sum()
    own = bounds[6] / bounds[-1]
    assert share > own + 0.1  # 3:1 of the shard draws, against the corpora's own sizes
    assert max(copy for b in batches for _, _, copy in b) >= 1


def test_shards_resume_exactly_from_a_checkpoint_in_the_middle_of_an_epoch(tmp_path, demo_shards):
    """Stopped at update 5 (in epoch 1, 3 of its 4 batches to go) and resumed from its
    checkpoint: the run continues as the uninterrupted one did (loss, LR, temperature,
    accuracy at every update); two loader workers read the shards."""
    shards, reference = demo_shards
    common = [*RESUMABLE, *shard_args(shards), "data.num_workers=2"]
    for stop in (5, 14):
        cfg = compose_cfg(
            [
                *common,
                f"trainer.max_steps={stop}",
                "callbacks.periodic.every_n_train_steps=1",
                "resume=true",
            ],
            tmp_path / "run",
        )
        assert train(cfg).global_step == stop
    same_curve(tmp_path / "run", reference)


@pytest.mark.slow  # kill -9 and resume: tests/test_interruptions.py (manifests), default run
def test_shards_resume_exactly_after_kill_9(tmp_path, demo_shards):
    """kill -9 at an update, then resume=true: the curve is the uninterrupted run's."""
    shards, reference = demo_shards
    run = tmp_path / "killed"
    args = [
        *RESUMABLE,
        *shard_args(shards),
        "data.num_workers=2",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=2",
        f"hydra.run.dir={run}",
    ]
    proc = start(*args)
    wait_for(lambda: (run / "checkpoints" / "step0000006.ckpt").is_file(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    killed_at = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 4 <= killed_at < 14
    proc = run_cli(*args, "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, reference)


def test_dropped_connections_are_retried_and_read_on_at_the_same_member(
    demo_shards, server, monkeypatch
):
    """A server that cuts the first response of every shard short: each read is retried,
    reads forward to the member asked for, and every utterance equals the folder's."""
    from w2v2_pretrain.data.shards import transport
    from w2v2_pretrain.data.shards.reader import ShardDataset
    from w2v2_pretrain.data.shards.transport import Transfer

    waits = []
    monkeypatch.setattr(transport, "sleep", waits.append)

    shards, _ = demo_shards
    fast = Transfer(retries=2, backoff=0.01)
    url = server(shards, "flaky")

    def items(location: str) -> list[np.ndarray]:
        ds = ShardDataset([read_index(location, "train", fast)], fast, max_sample_size=None)
        return [ds[(i, 0)].wav for i in range(len(ds))]

    for got, want in zip(items(url), items(str(shards)), strict=True):
        np.testing.assert_array_equal(got, want)
    assert waits == [0.01] * 4  # one retry per shard, each after the first wait


@pytest.mark.slow  # the retry and its reading on: the test above, in the default run
def test_shards_over_http_with_dropped_connections_train_as_from_the_folder(
    tmp_path, demo_shards, server
):
    """A server that cuts the first response of every shard short: each read is retried and
    goes on at the same member, and the run is the one made from the local folder."""
    shards, reference = demo_shards
    url = server(shards, "flaky")
    run = tmp_path / "run"
    proc = run_cli(
        *RESUMABLE,
        *shard_args(url),
        "data.num_workers=2",
        "data.shard_retries=2",
        "trainer.max_steps=14",
        f"hydra.run.dir={run}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(run, reference)


def _die_mid_epoch(run: Path, shards: Path, server) -> list[str]:
    """A run whose server goes away after two shards: the reads are retried a bounded number
    of times, then the run stops with a one-line error naming the shard and the checkpoint.
    The run's overrides (less the location)."""
    common = [
        *RESUMABLE,
        "data.num_workers=2",
        "data.shard_retries=1",
        "trainer.max_steps=14",
        "callbacks.periodic.every_n_train_steps=1",
        f"hydra.run.dir={run}",
    ]
    url = server(shards, "dies", "2")
    t0 = time.monotonic()
    proc = run_cli(*common, *shard_args(url), timeout=300)
    assert time.monotonic() - t0 < 120
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"error: {url}/train/recording.0000") and ".tar: " in line, line
    assert "gave up after 2 tries" in line and "continue with resume=true" in line, line
    saved = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"]
    assert 1 <= saved < 14
    return common


def test_a_server_dying_mid_epoch_stops_the_run_with_a_checkpoint(tmp_path, demo_shards, server):
    """Bounded retries, then a clear error with a checkpoint: never a hang."""
    _die_mid_epoch(tmp_path / "run", demo_shards[0], server)


@pytest.mark.slow  # the stop itself is in the default run; resume: test above and kill -9 tests
def test_after_the_server_died_resume_continues_exactly(tmp_path, demo_shards, server):
    """With the server back, resume=true finishes the run as the uninterrupted one."""
    shards, reference = demo_shards
    common = _die_mid_epoch(tmp_path / "run", shards, server)
    proc = run_cli(*common, *shard_args(server(shards, "serve")), "resume=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    same_curve(tmp_path / "run", reference)


def test_shard_index_errors_are_one_line(tmp_path):
    """A location without shards, an index of another format and an unreachable server are
    one-line errors naming the location."""
    from helpers import FAST, error_line

    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "index.json").write_text(json.dumps({"format": "webdataset"}))
    for location, says in (
        (tmp_path / "none", "index.json: not found"),
        (tmp_path / "other", "index.json: not a shard index (not a w2v2-shards index)"),
        ("http://127.0.0.1:9/x", "gave up after 1 tries"),
    ):
        line = error_line([*FAST, *shard_args(location), "data.shard_retries=0"], tmp_path / "run")
        assert line.startswith("error: ") and says in line, line
    line = error_line([*FAST, f"data.shards={tmp_path}", "trainer.max_steps=1"], tmp_path / "run")
    assert "data.shards: given with data.manifest_dir" in line


def test_fsspec_urls_and_pipe_commands_read_what_the_folder_holds(demo_shards):
    """``file://`` (fsspec, as ``s3://`` goes) and ``pipe:cat .../{}`` read the same
    utterances as the folder; a command that fails is retried, then a one-line error."""
    from w2v2_pretrain.data.shards.reader import ShardDataset
    from w2v2_pretrain.data.shards.transport import Transfer
    from w2v2_pretrain.errors import SourceUnavailable

    shards, _ = demo_shards
    fast = Transfer(retries=1, backoff=0.01)

    def items(location: str) -> list[np.ndarray]:
        ds = ShardDataset([read_index(location, "train", fast)], fast, max_sample_size=None)
        return [ds[(i, 0)].wav for i in range(len(ds))]

    want = items(str(shards))
    for location in (f"file://{shards}", f"pipe:cat {shards}/{{}}"):
        got = items(location)
        assert len(got) == len(want) == 12
        for a, b in zip(got, want, strict=True):
            np.testing.assert_array_equal(a, b)
    with pytest.raises(SourceUnavailable, match=r"exited 1.*gave up after 2 tries"):
        read_index(f"pipe:cat {shards}/nothing/{{}}", "train", fast)


def test_each_shard_is_opened_once_per_epoch_by_one_worker(tmp_path, demo_shards, monkeypatch):
    """Two loader workers: every shard is opened once an epoch, each by the worker its
    batches are dealt to (the stream is read front to back, never reopened)."""
    import os

    from w2v2_pretrain.data.config import DataConfig
    from w2v2_pretrain.data.datamodule import AudioDataModule
    from w2v2_pretrain.data.shards.reader import ShardStream

    log = tmp_path / "opens.txt"
    real = ShardStream._open

    def counted(self):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\t{self.location}\n")
        real(self)

    monkeypatch.setattr(ShardStream, "_open", counted)
    cfg = DataConfig(
        manifest_dir=None,
        shards=str(demo_shards[0]),
        min_sample_size=0,
        max_sample_size=40_000,
        max_tokens=120_000,
        num_workers=2,
        persistent_workers=False,
    )
    dm = AudioDataModule(cfg)
    dm.setup("fit")
    for epoch in (0, 1):
        log.unlink(missing_ok=True)
        loader = dm._loader("train")
        loader.batch_sampler.set_epoch(epoch)
        assert sum(len(b) for b in loader) == 12
        opens = [line.split("\t") for line in log.read_text().splitlines()]
        assert sorted(url for _, url in opens) == sorted({url for _, url in opens})
        assert len(opens) == 4 and len({pid for pid, _ in opens}) == 2


def test_a_bad_or_missing_member_is_a_bad_file_named_by_its_shard(tmp_path):
    """A member that does not decode, and one the shard lacks (index.json lists it), are bad
    files named by shard and member, left out of the batch and reported as with manifests."""
    import io
    import tarfile

    from w2v2_pretrain.data.collate import Collator
    from w2v2_pretrain.data.dataset import BadFile
    from w2v2_pretrain.data.shards.reader import ShardDataset
    from w2v2_pretrain.data.shards.transport import Transfer

    dest = tmp_path / "shards"
    write_shards(small_manifests(tmp_path, 6), dest, shard_size=3, progress=False)
    tar_path = dest / "train" / "recording.000000.tar"
    with tarfile.open(tar_path) as tar:
        members = [(m, tar.extractfile(m).read()) for m in tar.getmembers()]
    with tarfile.open(tar_path, "w") as tar:
        for k, (info, data) in enumerate(members[:4]):  # the third utterance left out
            if k == 2:  # the second utterance's audio: not FLAC any more
                data = b"not audio at all" * 10
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    split = read_index(str(dest), "train")
    ds = ShardDataset([split], Transfer(), max_sample_size=None)
    items = [ds[(i, 0)] for i in range(len(ds))]
    bad = {i: item for i, item in enumerate(items) if isinstance(item, BadFile)}
    assert sorted(bad) == [1, 2]
    assert bad[1].where == f"{tar_path} ({split.ids[1]}.flac)" and "unreadable" in bad[1].reason
    assert "not in the shard" in bad[2].reason
    batch = Collator(train=False)(items[:3])
    assert len(batch) == 1 and len(batch.bad_files) == 2


@pytest.mark.slow  # a two-process run; the plan's rank split is tested without processes above
def test_two_ddp_processes_train_on_disjoint_shards(tmp_path, demo_shards):
    """Two DDP processes on CPU, two loader workers each: the ranks' batches are disjoint and
    each is a run of consecutive members of one shard."""
    import os

    shards, _ = demo_shards
    rec = tmp_path / "batches"
    env_path = os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "w2v2_pretrain.cli.pretrain",
            *RESUMABLE,
            *shard_args(shards),
            "trainer=ddp_cpu",
            "data.num_workers=2",
            "data.max_tokens=40000",  # 12 batches of one utterance: 6 per rank and epoch
            "trainer.max_steps=6",
            "+callbacks.record._target_=helpers.RecordBatches",
            f"+callbacks.record.folder={rec}",
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        env=dict(os.environ, PYTHONPATH=env_path),
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ids = {}
    for rank in (0, 1):
        rows = (rec / f"node0-rank{rank}.tsv").read_text().splitlines()
        ids[rank] = [int(i) for row in rows for i in row.split("\t")[2].split(",")]
        assert len(rows) == 6
    assert not set(ids[0]) & set(ids[1])
    assert sorted(ids[0] + ids[1]) == list(range(12))
