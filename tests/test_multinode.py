"""Several nodes, for real: two one-process "nodes" on this machine, launched by torchrun and
as SLURM launches them, make the single-process update, train on disjoint batches, scan the
corpus once and resume together."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import SAME_TERMS, assert_same_update, compose_cfg, run_cli, small_manifests

from w2v2_pretrain.paths import REPO_ROOT
from w2v2_pretrain.train import build

TESTS = Path(__file__).parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
MODULE = ["-m", "w2v2_pretrain.cli.pretrain"]
# one CPU process per node, over gloo, full precision (multinode's bf16-mixed is for GPUs)
TWO_NODES = [
    "trainer=multinode",
    "trainer.accelerator=cpu",
    "trainer.devices=1",
    "trainer.num_nodes=2",
    "trainer.strategy=ddp",
    "trainer.precision=32",
]
DEADLINE = 300  # seconds for both nodes together


@dataclass
class Node:
    returncode: int
    stdout: str
    stderr: str


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any launcher's variables (a SLURM or torchrun job running the
    tests would otherwise be detected by the runs), tests/ importable, plus ``extra``."""
    launcher = ("SLURM_", "MASTER_", "LOCAL_RANK", "RANK", "WORLD_SIZE", "GROUP_RANK")
    env = {k: v for k, v in os.environ.items() if not k.startswith(launcher)}
    path = os.pathsep.join(p for p in (str(TESTS), str(REPO_ROOT), env.get("PYTHONPATH")) if p)
    return env | {"PYTHONPATH": path, "PYTHONUNBUFFERED": "1"} | extra


def launch(commands: list[tuple[list[str], dict[str, str]]], folder: Path) -> list[Node]:
    """Start every command in its own process group; wait for all, at most ``DEADLINE``
    seconds. When one fails or time runs out, the others' groups are killed (a node left
    alone waits for its peer until the rendezvous times out)."""
    folder.mkdir(parents=True, exist_ok=True)
    with ExitStack() as files:
        logs = [
            (
                files.enter_context(open(folder / f"{i}.out", "w+")),
                files.enter_context(open(folder / f"{i}.err", "w+")),
            )
            for i in range(len(commands))
        ]
        procs = [
            subprocess.Popen(
                cmd, stdout=out, stderr=err, cwd=REPO_ROOT, env=env, start_new_session=True
            )
            for (cmd, env), (out, err) in zip(commands, logs, strict=True)
        ]
        end = time.monotonic() + DEADLINE
        try:
            while any(p.poll() is None for p in procs):
                if any(p.returncode not in (None, 0) for p in procs) or time.monotonic() > end:
                    break
                time.sleep(0.5)
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
                    p.wait()
        for out, err in logs:
            out.seek(0), err.seek(0)
        return [
            Node(p.returncode, out.read(), err.read())
            for p, (out, err) in zip(procs, logs, strict=True)
        ]


def torchrun_nodes(
    overrides: list[str], port: int, folder: Path, rendezvous: str = "static"
) -> list[Node]:
    """Two torchrun launches, one process each, meeting on 127.0.0.1: ``static`` (node ranks
    0 and 1, ``--master-addr/--master-port``) or ``c10d`` (``--rdzv-backend c10d
    --rdzv-endpoint``; the rendezvous numbers the nodes in the order they arrive)."""
    meet = {
        "static": ["--master-addr=127.0.0.1", f"--master-port={port}"],
        "c10d": ["--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=w2v2"],
    }[rendezvous]
    commands = [
        (
            [
                *TORCHRUN,
                "--nnodes=2",
                f"--node-rank={rank}",
                "--nproc-per-node=1",
                *meet,
                *MODULE,
                *overrides,
            ],
            clean_env(),
        )
        for rank in (0, 1)
    ]
    return launch(commands, folder)


def slurm_nodes(overrides: list[str], port: int, folder: Path) -> list[Node]:
    """Two processes with the variables ``srun --nodes 2 --ntasks-per-node 1`` gives its tasks,
    started directly: Lightning's SLURMEnvironment needs SLURM_NTASKS (and, with more than one
    task, SLURM_NTASKS_PER_NODE) and a job name other than bash/interactive; not srun itself."""
    slurm = {
        "SLURM_NTASKS": "2",
        "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "2",
        "SLURM_LOCALID": "0",
        "SLURM_JOB_NAME": "w2v2-pretrain",
        "SLURM_NODELIST": "127.0.0.1",
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
    }
    commands = [
        (
            [sys.executable, *MODULE, *overrides],
            clean_env(**slurm, SLURM_PROCID=str(rank), SLURM_NODEID=str(rank)),
        )
        for rank in (0, 1)
    ]
    return launch(commands, folder)


def batches(folder: Path) -> dict[str, dict[int, tuple[str, set[int]]]]:
    """What `RecordBatches` wrote: per node-rank file, update -> (environment, utterance ids)."""
    out = {}
    for path in sorted(folder.glob("node*-rank*.tsv")):
        rows = [line.split("\t") for line in path.read_text().splitlines()]
        out[path.stem] = {int(s): (env, {int(i) for i in ids.split(",")}) for s, env, ids in rows}
    return out


def common(manifests: Path, run_dir: Path) -> list[str]:
    return [
        "experiment=demo",
        f"data.manifest_dir={manifests}",
        *SAME_TERMS,
        "probe.every_n_updates=0",
        "trainer.enable_progress_bar=false",
        f"hydra.run.dir={run_dir}",
    ]


def reference(tmp_path: Path) -> tuple[dict, Path]:
    """The weights before the update, and the checkpoint of one process with the whole batch
    of 4 (its own manifest folder, so the nodes' runs find no verify record)."""
    manifests = small_manifests(tmp_path / "one", 4)
    args = [*common(manifests, tmp_path / "one" / "run"), "data.max_tokens=64000"]
    proc = run_cli(*args, "trainer.max_steps=1", timeout=DEADLINE)
    assert proc.returncode == 0, proc.stderr[-3000:]
    cfg = compose_cfg(args, tmp_path / "init")
    pl.seed_everything(cfg.seed)  # as train() does: the weights before the update
    return build(cfg)[1].model.state_dict(), tmp_path / "one" / "run" / "checkpoints" / "last.ckpt"


def check_two_nodes(nodes: list[Node], record: Path, environment: str, step: int) -> None:
    """Both nodes finished, one (global rank 0) printing the summary; at update ``step`` each
    node trained on its own part of the batch (3 + 1 of the 4 utterances), under
    ``environment``."""
    for i, node in enumerate(nodes):
        assert node.returncode == 0, (i, node.stderr[-3000:])
    assert sum("pretraining finished" in node.stdout for node in nodes) == 1
    seen = batches(record)
    assert sorted(seen) == ["node0-rank0", "node1-rank1"], sorted(seen)
    parts = [seen[name][step] for name in ("node0-rank0", "node1-rank1")]
    assert {env for env, _ in parts} == {environment}
    (_, a), (_, b) = parts
    assert not a & b and a | b == {0, 1, 2, 3} and {len(a), len(b)} == {1, 3}, (a, b)


@pytest.mark.slow
def test_two_torchrun_nodes_update_as_one_process_scan_once_and_resume(tmp_path):
    """``torchrun --nnodes 2 --node-rank 0|1 --nproc-per-node 1`` with a static rendezvous on
    127.0.0.1, ``trainer=multinode`` on CPU: the update equals one process's with the same
    total batch; each node trains on its own utterances; only node 0 scans the corpus (the
    verify record), node 1 reads its record; ``resume=true`` (launched with the c10d
    rendezvous) continues both from the checkpoint without scanning again."""
    before, one = reference(tmp_path)
    manifests = small_manifests(tmp_path / "nodes", 4)
    record = tmp_path / "batches"
    args = [
        *common(manifests, tmp_path / "run"),
        *TWO_NODES,
        "data.max_tokens=48000",
        "+callbacks.record._target_=helpers.RecordBatches",
        f"+callbacks.record.folder={record}",
    ]
    nodes = torchrun_nodes([*args, "trainer.max_steps=1"], free_port(), tmp_path / "logs")
    check_two_nodes(nodes, record, "TorchElasticEnvironment", step=0)
    last = tmp_path / "run" / "checkpoints" / "last.ckpt"
    assert_same_update(before, one, {"two nodes": last})
    # the scan: node 0's progress bars (train and valid), nothing on node 1
    assert nodes[0].stderr.count("header check of train.tsv") >= 1
    assert "header check of valid.tsv" in nodes[0].stderr
    assert "header check" not in nodes[1].stderr
    assert "cannot read rank 0's verify record" not in nodes[1].stderr
    assert (manifests / "train.tsv.verified.npz").is_file()

    # resumed through torchrun's other rendezvous, c10d
    again = [*args, "trainer.max_steps=2", "resume=true"]
    resumed = torchrun_nodes(again, free_port(), tmp_path / "logs2", rendezvous="c10d")
    check_two_nodes(resumed, record, "TorchElasticEnvironment", step=1)
    assert torch.load(last, weights_only=True)["global_step"] == 2
    assert not any("header check" in node.stderr for node in resumed)
    assert "verified before" in "".join(node.stderr + node.stdout for node in resumed)


@pytest.mark.slow
def test_two_slurm_tasks_update_as_one_process(tmp_path):
    """The SLURM path: two processes started with the variables srun gives two tasks on two
    nodes (no srun: Lightning reads only the variables) make the same update, on disjoint
    batches, under Lightning's SLURMEnvironment."""
    before, one = reference(tmp_path)
    manifests = small_manifests(tmp_path / "nodes", 4)
    record = tmp_path / "batches"
    args = [
        *common(manifests, tmp_path / "run"),
        *TWO_NODES,
        "data.max_tokens=48000",
        "trainer.max_steps=1",
        "+callbacks.record._target_=helpers.RecordBatches",
        f"+callbacks.record.folder={record}",
    ]
    nodes = slurm_nodes(args, free_port(), tmp_path / "logs")
    check_two_nodes(nodes, record, "SLURMEnvironment", step=0)
    assert_same_update(before, one, {"slurm": tmp_path / "run" / "checkpoints" / "last.ckpt"})
