"""What an update means: fairseq's normalisation under any layout, once-per-update logging,
audio per update, and skipped non-finite updates."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from helpers import (
    FAST,
    SAME_TERMS,
    SGD,
    assert_same_update,
    compose_cfg,
    run_cli,
    scalars,
    small_manifests,
)
from typing_extensions import override

from w2v2_pretrain.errors import ConfigError, TrainingError
from w2v2_pretrain.train import build, train


def test_update_independent_of_layout(tmp_path):
    """One process with a batch of 4, one with 2 micro-batches (3 + 1 utterances) and two DDP
    processes (3 + 1) make the same update: the summed loss over every masked frame of the
    update, divided by their number (fairseq). Normalising each micro-batch or rank by its own
    count (3 x 20 vs 1 x 20 frames) would give a different update; SGD makes the update
    proportional to the gradient, so it would show (Adam's first step would hide it)."""
    manifests = small_manifests(tmp_path, 4)
    common = ["experiment=demo", f"data.manifest_dir={manifests}", *SAME_TERMS]
    runs = {
        "one": ["data.max_tokens=64000", "trainer.max_steps=1"],
        "accumulated": [
            "data.max_tokens=48000",
            "trainer.max_steps=1",
            "trainer.accumulate_grad_batches=2",
        ],
        "two": ["data.max_tokens=48000", "trainer.max_steps=1", "trainer=ddp_cpu"],
    }
    for name, extra in runs.items():
        if name == "two":  # two processes: through the real CLI (Lightning's launcher)
            proc = run_cli(*common, *extra, f"hydra.run.dir={tmp_path / name}")
            assert proc.returncode == 0, proc.stderr[-3000:]
        else:  # one process: in this one, as the CLI runs it
            assert train(compose_cfg([*common, *extra], tmp_path / name)).global_step == 1

    cfg = compose_cfg([*common, "data.max_tokens=64000"], tmp_path / "init")
    pl.seed_everything(cfg.seed)  # as train() does: the weights before the update
    before = build(cfg)[1].model.state_dict()
    checkpoints = {name: tmp_path / name / "checkpoints" / "last.ckpt" for name in runs}
    assert_same_update(before, checkpoints.pop("one"), checkpoints)


def test_everything_logged_once_per_update_under_accumulation(tmp_path):
    """With 2 micro-batches per update, every training scalar (the LR too) has one event per
    update, the codebook picture is drawn once at its updates, and the per-update metrics
    cover both micro-batches (audio per update = both batches)."""
    manifests = small_manifests(tmp_path, 12)
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            "data.max_tokens=120000",
            "trainer.accumulate_grad_batches=2",
            "trainer.max_steps=5",
            "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=1000",
            "trainer.limit_val_batches=0",
            "codebook_image_every=2",
        ],
        tmp_path,
    )
    train(cfg)
    logged = scalars(tmp_path)
    train_tags = [t for t in logged if t.startswith("train/")]
    assert "train/lr" in train_tags and "train/update_audio_seconds" in train_tags
    for tag in train_tags:
        per_step = Counter(step for step, _ in logged[tag])
        assert set(per_step.values()) == {1}, (tag, per_step)
        assert sorted(per_step) == list(range(5)) or tag == "train/audio_seconds_per_second"
    # a micro-batch holds at most 3 crops of 2.5 s: more than 7.5 s means both were counted
    seconds = [v for _, v in logged["train/update_audio_seconds"]]
    assert all(7.5 < s <= 15.0 for s in seconds), seconds

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(tmp_path / "tensorboard"), size_guidance={"images": 0})
    ea.Reload()
    assert [e.step for e in ea.Images("train/codebook_usage")] == [2, 4]


def test_audio_per_update_derives_accumulation(tmp_path, caplog):
    """The paper's 5600 s per update holds on 1, 8 or 64 devices; a conflicting explicit
    accumulation is refused."""
    base = [
        "experiment=base_librispeech",
        "trainer.accelerator=cpu",
        "trainer.strategy=auto",
        f"data.manifest_dir={small_manifests(tmp_path, 2)}",
    ]
    for devices, nodes, expected in ((1, 1, 64), (8, 1, 8), (8, 8, 1), (2, 1, 32)):
        cfg = compose_cfg(
            [*base, f"trainer.devices={devices}", f"trainer.num_nodes={nodes}"], tmp_path
        )
        if devices > 1:
            cfg.trainer.strategy = "ddp"
        caplog.clear()
        with caplog.at_level("INFO", logger="w2v2_pretrain.train"):
            _, _, trainer = build(cfg)
        assert trainer.accumulate_grad_batches == expected, (devices, nodes)
        assert "= up to 1.56 h (5,600 s); asked for 1.56 h" in caplog.text
    cfg = compose_cfg([*base, "trainer.devices=1", "trainer.accumulate_grad_batches=8"], tmp_path)
    with pytest.raises(ConfigError, match="accumulate_grad_batches=8 and data.audio_per_update"):
        build(cfg)
    cfg = compose_cfg([*base, "trainer.devices=1", "data.audio_per_update=lots"], tmp_path)
    with pytest.raises(ConfigError, match="data.audio_per_update: expected an amount of audio"):
        build(cfg)


class InjectNaN(pl.Callback):
    """Turns the audio of chosen micro-batches into NaN: a real non-finite loss and gradient."""

    def __init__(self, batches: set[int]) -> None:
        self.batches = batches

    @override
    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if trainer.global_step in self.batches:
            batch.source[0, 100] = float("nan")


@pytest.mark.parametrize("optimizer", ["fused", "sgd", "fp16-scaler"])
def test_nonfinite_update_is_skipped_and_counted(tmp_path, optimizer):
    """A NaN batch makes no update: the weights and the optimizer state stay as they were
    (fused AdamW through its on-device found_inf, any other optimizer by dropping the
    gradients, under 16-mixed with the grad scaler too), it is counted, and training goes on
    with finite weights."""
    manifests = small_manifests(tmp_path, 8)
    extra = {
        "fused": [],
        "sgd": [*SGD, "optim.optimizer.lr=0.01"],
        "fp16-scaler": ["trainer.precision=16-mixed"],
    }[optimizer]
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            "data.max_tokens=40000",  # one clip a batch
            "trainer.max_steps=5",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=0",
            *extra,
        ],
        tmp_path,
    )
    pl.seed_everything(cfg.seed)
    datamodule, module, trainer = build(cfg)
    if optimizer == "fp16-scaler":  # Lightning gives CPU runs no scaler; a GPU run has one
        from pytorch_lightning.plugins.precision import MixedPrecision

        scaler = torch.amp.GradScaler("cpu", init_scale=16.0)  # no early overflow steps
        trainer.strategy.precision_plugin = MixedPrecision("16-mixed", "cpu", scaler=scaler)
    weights: dict[int, dict[str, torch.Tensor]] = {}

    class Snapshot(pl.Callback):
        @override
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            weights[trainer.global_step] = {
                k: v.detach().clone() for k, v in pl_module.model.state_dict().items()
            }

    trainer.callbacks.extend([InjectNaN({2}), Snapshot()])
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 5
    unchanged = all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])
    assert unchanged  # update 2 (the NaN batch) changed nothing
    assert not all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])
    assert all(torch.isfinite(v).all() for v in weights[5].values())
    logged = dict(scalars(tmp_path)["train/skipped_updates"])
    assert logged[1] == 0 and logged[2] == 1 and logged[4] == 1
    if optimizer == "fp16-scaler":  # unfused: Lightning unscales before the module's checks
        assert trainer.optimizers[0].defaults["fused"] is False
        assert scaler.get_scale() == 8.0  # the scaler saw the NaN and lowered its scale
        grad_norms = [v for _, v in scalars(tmp_path)["train/grad_norm"]]
        assert max(g for g in grad_norms if g == g) < 1e3  # not carrying the loss scale
    if optimizer == "fused":
        state = trainer.optimizers[0].state
        steps = {int(s["step"]) for s in state.values()}
        assert steps == {4}  # 5 updates, one skipped


def test_repeated_nonfinite_updates_stop_with_a_checkpoint(tmp_path):
    """max_bad_updates non-finite updates in a row stop the run with a one-line error and a
    checkpoint of the last good weights, from which the run resumes."""
    manifests = small_manifests(tmp_path, 8)
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            "data.max_tokens=80000",
            "trainer.max_steps=20",
            "trainer.log_every_n_steps=1",
            "trainer.limit_val_batches=0",
            "max_bad_updates=3",
        ],
        tmp_path,
    )
    pl.seed_everything(cfg.seed)
    datamodule, module, trainer = build(cfg)
    trainer.callbacks.append(InjectNaN({4, 5, 6, 7, 8}))
    with pytest.raises(TrainingError, match=r"3 updates in a row \(updates 4 to 6\) were skipped"):
        trainer.fit(module, datamodule=datamodule)
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 6  # updates 4 and 5 counted, the third stopped it
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    assert math.isfinite(float(ckpt["state_dict"]["model.mask_embedding"].sum()))
    resumed = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            "data.max_tokens=80000",
            "trainer.max_steps=8",
            "trainer.limit_val_batches=0",
            "resume=true",
        ],
        tmp_path,
    )
    assert train(resumed).global_step == 8
    assert Path(tmp_path / "checkpoints" / "last.ckpt").is_file()
