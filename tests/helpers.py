"""What several test modules use: real audio files on disk, a messy corpus, Hydra configs
composed as the CLI composes them, the CLI in a subprocess, and TensorBoard's scalars."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import soundfile as sf
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import open_dict
from w2v2_pretrain.configs import register_configs

from w2v2_pretrain.events import image_tags, read_scalars
from w2v2_pretrain.paths import CONFIG_DIR, REPO_ROOT


def write_tone(
    path: Path,
    seconds: float,
    rate: int = 16_000,
    channels: int = 1,
    seed: int = 0,
    fmt: str | None = None,
) -> np.ndarray:
    """Write a noisy tone; return the float32 samples as written (frames, channels)."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    base = 0.3 * np.sin(2 * np.pi * (200 + 50 * seed % 300) * t) + 0.05 * rng.standard_normal(n)
    data = np.stack([base * (0.5 + 0.5 * c) for c in range(channels)], axis=1).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, data if channels > 1 else data[:, 0], rate, format=fmt)
    return data


# good files in every format the loader must take, and each kind of bad file
MESSY_GOOD = ("good.flac", "rate8k.wav", "stereo44k.flac", "pcm_u8.wav", "float32.wav")
MESSY_BAD_AT_HEADER = {  # found by the header pass (data.verify=header, the default)
    "missing.flac": "file not found",
    "corrupt.flac": "unreadable audio",
    "text.flac": "unreadable audio",
    "empty.wav": "empty audio (0 samples)",
    "tiny.flac": "shorter than the feature encoder's receptive field",
}
MESSY_BAD_AT_DECODE = {  # intact headers: found by data.verify=decode, or met in training
    "truncated.flac": "flac decoder lost sync",
    "nan.wav": "contains NaN or Inf samples",
    "inf.wav": "contains NaN or Inf samples",
    "silent.flac": "all-zero audio (digital silence)",
}


def messy_corpus(tmp_path: Path, copies: int = 2) -> Path:
    """A manifest folder whose train.tsv lists ``copies`` of each good file (1.2-1.5 s) and
    one of each bad file; valid.tsv lists good files only."""
    root = tmp_path / "messy"
    rows: list[tuple[str, int]] = []
    for c in range(copies):
        d = f"c{c}/"
        a = write_tone(root / f"{d}good.flac", 1.2, seed=10 + c)
        b = write_tone(root / f"{d}rate8k.wav", 1.5, rate=8000, seed=20 + c)
        s = write_tone(root / f"{d}stereo44k.flac", 1.3, rate=44_100, channels=2, seed=30 + c)
        u = write_tone(root / f"{d}pcm_u8.wav", 1.2, seed=40 + c)
        sf.write(root / f"{d}pcm_u8.wav", u, 16_000, subtype="PCM_U8")
        f = write_tone(root / f"{d}float32.wav", 1.2, seed=50 + c)
        sf.write(root / f"{d}float32.wav", f, 16_000, subtype="FLOAT")
        rows += [(d + n, len(x)) for n, x in zip(MESSY_GOOD, (a, b, s, u, f), strict=True)]
    write_tone(root / "truncated.flac", 2.0, seed=60)
    raw = (root / "truncated.flac").read_bytes()
    (root / "truncated.flac").write_bytes(raw[: len(raw) // 3])
    (root / "corrupt.flac").write_bytes(np.random.default_rng(0).bytes(5000))
    (root / "text.flac").write_text("hello, I am not audio\n")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    write_tone(root / "tiny.flac", 100 / 16_000)
    for name, value in (("nan.wav", np.nan), ("inf.wav", np.inf)):
        wav = np.full(20_000, 0.1, dtype=np.float32)
        wav[5000] = value
        sf.write(root / name, wav, 16_000, subtype="FLOAT")
    sf.write(root / "silent.flac", np.zeros(20_000, dtype=np.float32), 16_000)
    sizes = {"truncated.flac": 32_000, "missing.flac": 20_000, "corrupt.flac": 20_000}
    sizes |= {"text.flac": 20_000, "empty.wav": 20_000, "tiny.flac": 100}
    sizes |= {"nan.wav": 20_000, "inf.wav": 20_000, "silent.flac": 20_000}
    rows += list(sizes.items())
    out = tmp_path / "messy_manifests"
    out.mkdir()
    (out / "train.tsv").write_text(f"{root}\n" + "".join(f"{p}\t{n}\n" for p, n in rows))
    good = rows[: len(MESSY_GOOD)]
    (out / "valid.tsv").write_text(f"{root}\n" + "".join(f"{p}\t{n}\n" for p, n in good))
    return out


EXPERIMENTS = sorted(p.stem for p in (CONFIG_DIR / "experiment").glob("*.yaml"))
CLI = [sys.executable, "-m", "w2v2_pretrain.cli.pretrain"]


def compose_cfg(overrides: list[str], output_dir: Path):
    """Compose exactly as ``w2v2-pretrain`` does, with the run folder set to ``output_dir``."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "train",
            overrides=[*overrides, f"hydra.run.dir={output_dir}"],
            return_hydra_config=True,
        )
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(output_dir)
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]  # the task function never sees the hydra node
    return cfg


def run_cli(*overrides: str, cwd: Path = REPO_ROOT, timeout: int = 600):
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    return subprocess.run(
        [*CLI, *overrides], capture_output=True, text=True, cwd=cwd, env=env, timeout=timeout
    )


def scalars(run_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """The run's scalars by tag, and its image tags under ``__images__``."""
    return {**read_scalars(run_dir), "__images__": image_tags(run_dir)}


FAST = [
    "experiment=demo",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "data.verify=none",
    "probe.every_n_updates=0",  # the demo's probe rounds: tests/test_probes.py covers them
]


def small_manifests(tmp_path: Path, n: int) -> Path:
    """A manifest folder with the first ``n`` demo utterances for training and validation."""
    src = (REPO_ROOT / "data" / "manifests" / "train.tsv").read_text().splitlines()
    root = (REPO_ROOT / "data" / "demo").resolve()
    out = tmp_path / "manifests"
    out.mkdir(parents=True)
    body = "\n".join([str(root), *src[1 : n + 1]]) + "\n"
    (out / "train.tsv").write_text(body)
    (out / "valid.tsv").write_text(body)
    return out


SGD = [
    "optim.optimizer._target_=torch.optim.SGD",
    "~optim.optimizer.betas",
    "~optim.optimizer.eps",
    "~optim.optimizer.fused",
]
# every utterance 1 s, 20 masked frames each (span 1), its own noise: any split of a batch into
# micro-batches or processes computes the same per-utterance terms
SAME_TERMS = [
    "data.max_sample_size=16000",
    "data.min_sample_size=16000",
    "data.num_workers=0",
    "data.persistent_workers=false",
    "trainer.limit_val_batches=0",
    "fixed_noise_seed=7",
    "model.masking.mask_prob=0",
    "model.masking.mask_length=1",
    "model.masking.min_masks=20",
    "model.objective.num_negatives=10",
    "model.dropout_input=0",
    "model.dropout_features=0",
    "model.context_network.dropout=0",
    "model.context_network.attention_dropout=0",
    # code perplexity is a statistic of each micro-batch (as in fairseq): leave it out
    "model.objective.diversity_weight=0",
    *SGD,
    "optim.optimizer.lr=0.5",
    "optim.scheduler.warmup=0",
    "callbacks.periodic.every_n_train_steps=1",
]


class RecordBatches(pl.Callback):
    """Appends, per training batch, ``update<TAB>cluster environment<TAB>utterance ids`` to
    ``folder/node<N>-rank<R>.tsv``: which node and rank trained on what (a run's callback:
    ``+callbacks.record._target_=helpers.RecordBatches +callbacks.record.folder=...``, with
    tests/ on PYTHONPATH)."""

    def __init__(self, folder: str) -> None:
        self.folder = Path(folder)

    def on_train_batch_start(self, trainer, _module, batch, _batch_idx) -> None:
        env = type(trainer.strategy.cluster_environment).__name__
        ids = ",".join(str(i) for i in batch.ids.tolist())
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"node{trainer.node_rank}-rank{trainer.global_rank}.tsv"
        with open(self.folder / name, "a") as f:
            f.write(f"{trainer.global_step}\t{env}\t{ids}\n")


def assert_same_update(before: dict, reference: Path, others: dict[str, Path]) -> None:
    """The weights of each checkpoint in ``others`` moved from ``before`` as those of the
    ``reference`` checkpoint did (to 1e-3 of the largest change of each tensor)."""
    ref_state = torch.load(reference, weights_only=True)["state_dict"]
    states = {name: torch.load(p, weights_only=True)["state_dict"] for name, p in others.items()}
    moved = 0
    for key, w0 in before.items():
        ref = ref_state[f"model.{key}"] - w0
        scale = ref.abs().max().item()
        if scale == 0:
            continue
        moved += 1
        for name, state in states.items():
            delta = state[f"model.{key}"] - w0
            assert (delta - ref).abs().max().item() <= 1e-3 * scale + 1e-7, (name, key)
    assert moved > 50


def error_line(overrides: list[str], output_dir: Path) -> str:
    """The ``error: ...`` line ``w2v2-pretrain`` prints for these overrides, found in-process
    as the CLI finds it: Hydra's composition (its errors worded by the CLI's
    `composition_error`), then ``train``, whose project errors the CLI prints as
    ``error: <one line>``. A CLI start costs ~5 s of imports, so most error cases run here and
    a few through the real CLI (tests/test_errors.py)."""
    from hydra.errors import HydraException

    from w2v2_pretrain.cli.pretrain import composition_error
    from w2v2_pretrain.errors import W2V2Error, one_line
    from w2v2_pretrain.train import train

    try:
        cfg = compose_cfg(overrides, output_dir)
    except HydraException as e:
        return f"error: {composition_error(e)}"
    try:
        train(cfg)
    except W2V2Error as e:
        return f"error: {one_line(e)}"
    raise AssertionError(f"no error for {overrides}")


def rows(manifest) -> list[tuple[str, int]]:
    """Each entry of a `Manifest` as ``(path, num_samples)``, as the file lists it."""
    return [(manifest.path(i), int(manifest.num_samples[i])) for i in range(len(manifest))]


def paths(manifest) -> list[str]:
    """Each entry's path as the manifest lists it."""
    return [manifest.path(i) for i in range(len(manifest))]


def sampler_batches(sampler, epoch: int) -> list[list[tuple[int, int]]]:
    """Every rank's batches of ``(index, copy)`` for ``epoch``, in dealing order."""
    plan = sampler.plan(epoch)
    return [plan.batch(k) for k in range(len(plan))]


def padding_mask(batch) -> torch.Tensor:
    """(B, L) bool, True at the padded samples of a `Batch`."""
    steps = torch.arange(batch.source.shape[1])
    return steps[None, :] >= batch.lengths[:, None]


def plan_from_mask(mask: torch.Tensor, distractors: torch.Tensor):
    """A `MaskPlan` from a boolean (B, T) mask with the same count M per row, and (B, M, K)
    distractors (what the collator's planner would have drawn)."""
    from w2v2_pretrain.models.masking import MaskPlan

    counts = mask.sum(1)
    assert bool((counts == counts[0]).all()), counts
    B, M = mask.shape[0], int(counts[0])
    assert distractors.shape[:2] == (B, M), distractors.shape
    return MaskPlan(mask, mask.nonzero()[:, 1].view(B, M), distractors)


def manifest_of(tmp_path, files: dict[str, float], **kw):
    """Write files {relpath: seconds} and a manifest of them; return the parsed manifest."""
    root = tmp_path / "audio"
    lines = [str(root)]
    for i, (rel, seconds) in enumerate(files.items()):
        data = write_tone(root / rel, seconds, seed=i, **kw)
        lines.append(f"{rel}\t{len(data)}")
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    from w2v2_pretrain.data.tsv import read_manifest

    return read_manifest(path)
