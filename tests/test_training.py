"""The pretraining application: configs composed as the CLI does, real Trainer runs."""

from __future__ import annotations

import pytest
import torch
from helpers import EXPERIMENTS, FAST, compose_cfg, error_line, run_cli, scalars, small_manifests

from w2v2_pretrain.model_files import save_model
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.paths import REPO_ROOT
from w2v2_pretrain.train import build, train


def test_the_experiments_are_found():
    assert {"demo", "base_librispeech", "large_librivox", "continue_pretraining"} <= set(
        EXPERIMENTS
    )


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_instantiates(experiment, tmp_path):
    overrides = [f"experiment={experiment}", "trainer.accelerator=cpu"]
    if experiment != "demo":
        overrides.append(f"data.manifest_dir={REPO_ROOT / 'data' / 'manifests'}")
    if experiment == "continue_pretraining":  # from a small model of ours
        save_model(Wav2Vec2Model(preset("tiny")), tmp_path / "source.pt")
        overrides.append(f"init_from={tmp_path / 'source.pt'}")
    cfg = compose_cfg(overrides, tmp_path)
    datamodule, module, trainer = build(cfg)
    expected = {
        "demo": "tiny",
        "base_librispeech": "base",
        "large_librivox": "large",
        "continue_pretraining": "tiny",
    }[experiment]
    if experiment == "continue_pretraining":  # the source's model and settings (ours records
        # all of them), the Gumbel temperature going on from where the source's schedule ended
        source = preset("tiny")
        source.quantizer.temperature[0] = source.quantizer.temperature[1]
        assert module.cfg == source
        assert cfg.optim.optimizer.lr == 5e-5 and datamodule.audio_per_update == 1400
    elif experiment == "demo":  # the tiny geometry; the demo recipe departs in masking etc.
        tiny = preset("tiny")
        assert module.cfg.feature_encoder == tiny.feature_encoder
        assert module.cfg.quantizer == tiny.quantizer
        assert module.cfg.context_network.embed_dim == tiny.context_network.embed_dim
    else:
        assert module.cfg == preset(expected)
    assert trainer.max_steps == cfg.trainer.max_steps
    assert datamodule.cfg.max_tokens == cfg.data.max_tokens
    if experiment == "base_librispeech":
        # 1.4M samples x 64 GPU-batches per update (about 1.6 h of audio): on 8 devices the
        # accumulation is derived as 8
        assert trainer.world_size == 8 and trainer.accumulate_grad_batches == 8
        hours = 1_400_000 * 8 * trainer.accumulate_grad_batches / 16000 / 3600
        assert 1.5 < hours < 1.6 and cfg.optim.optimizer.lr == 5e-4
        assert cfg.optim.scheduler.warmup == 32000 and cfg.trainer.max_steps == 400_000


def test_fast_dev_run(tmp_path):
    cfg = compose_cfg([*FAST, "trainer.fast_dev_run=2"], tmp_path)
    result = train(cfg)
    assert result.global_step == 2
    assert all(torch.isfinite(torch.tensor(v)) for v in result.val_metrics.values())


def test_bad_override_is_clear_error(tmp_path):
    """A misspelt key, a value of the wrong type, a value out of range: the line the CLI prints
    (found in-process as the CLI finds it; test_errors.py runs such cases through the CLI)."""
    line = error_line(["experiment=demo", "data.max_tokenz=5"], tmp_path)
    assert line == "error: data.max_tokenz: no such setting; did you mean data.max_tokens?"
    line = error_line(["experiment=demo", "data.max_tokens=lots"], tmp_path)
    assert line == "error: data.max_tokens: expected an integer, got 'lots'"
    line = error_line(["experiment=demo", "model.context_network.num_heads=3"], tmp_path)
    assert "model.context_network.num_heads: embed_dim 256 is not divisible" in line


def test_resume_continues_exactly(tmp_path):
    """Interrupted in the middle of an epoch and again at an epoch's end, then resumed: step,
    LR, temperature and the loss curve continue as in an uninterrupted run (same seed),
    including the data order inside and across epochs."""
    manifests = small_manifests(tmp_path, 12)  # 4 batches of 3 utterances per epoch
    common = [
        *FAST,
        f"data.manifest_dir={manifests}",
        "data.max_tokens=120000",
        "optim.scheduler.total_steps=10",
        "optim.scheduler.warmup=2",
        "trainer.log_every_n_steps=1",
        "trainer.val_check_interval=1000",
        "callbacks.periodic.every_n_train_steps=1",
        "callbacks.periodic.save_top_k=1",
        "codebook_image_every=2",
    ]
    full = compose_cfg([*common, "trainer.max_steps=10"], tmp_path / "full")
    import pytorch_lightning as pl

    pl.seed_everything(full.seed, workers=True)  # as train() does
    datamodule, module, trainer = build(full)
    datamodule.setup("fit")
    assert len(datamodule.sampler("train")) == 4
    trainer.fit(module, datamodule=datamodule)
    assert trainer.train_dataloader.batch_sampler.epoch == 2  # reshuffled each epoch

    for stop in (3, 8, 10):  # mid-epoch, end of epoch 1, the end
        part = compose_cfg(
            [*common, f"trainer.max_steps={stop}", "resume=true"], tmp_path / "split"
        )
        result = train(part)
        assert result.global_step == stop
        ckpt = torch.load(tmp_path / "split" / "checkpoints" / "last.ckpt", weights_only=True)
        assert ckpt["global_step"] == stop

    a, b = scalars(tmp_path / "full"), scalars(tmp_path / "split")
    for tag in ("train/loss", "train/lr", "train/temperature", "train/accuracy"):
        steps_a = dict(a[tag])
        steps_b = dict(b[tag])
        assert sorted(steps_a) == sorted(steps_b) == list(range(10)), tag
        for step in range(10):
            assert steps_b[step] == pytest.approx(steps_a[step], rel=1e-5, abs=1e-7), (tag, step)

    # TensorBoard holds every quantity the README promises, and the codebook picture
    for tag in (
        "loss",
        "contrastive",
        "diversity",
        "feature_penalty",
        "accuracy",
        "code_perplexity",
        "prob_perplexity",
        "temperature",
        "lr",
        "grad_norm",
        "masked_fraction",
        "audio_seconds_per_second",
        "update_audio_seconds",
        "identical_distractors",
        "skipped_updates",
        "bad_files",
    ):
        assert f"train/{tag}" in b, tag
    for tag in ("loss", "accuracy", "code_perplexity", "prob_perplexity", "contrastive_chance"):
        assert f"val/{tag}" in b, tag
    assert "train/codebook_usage" in b["__images__"]


def test_codebook_usage_figure_counts_entries():
    import numpy as np

    from w2v2_pretrain.figures import codebook_usage_figure

    counts = np.zeros((2, 64))
    counts[0, :10] = 5
    counts[1, 3] = 100  # collapsed codebook
    fig = codebook_usage_figure(counts, step=7)
    titles = [ax.get_title(loc="right") for ax in fig.axes]
    assert titles == ["10/64 entries used", "1/64 entries used"]
    heights = [p.get_height() for p in fig.axes[1].patches]
    assert heights[3] == 1.0 and sum(heights) == 1.0


def test_overfit_one_batch_learns(tmp_path):
    """Masks, distractors and Gumbel noise fixed per utterance, the same batch (3 clips) every
    step: contrastive accuracy goes from chance to >= 0.95 within 25 updates (it does by about
    update 8). Guards the straight-through quantizer, the distractors and the projections
    together."""
    cfg = compose_cfg(
        [
            *FAST,
            "data.max_tokens=120000",
            "trainer.overfit_batches=1",
            "trainer.max_steps=25",
            "trainer.log_every_n_steps=1",
            "trainer.val_check_interval=1000",
            "trainer.limit_val_batches=0",
            "model.dropout_input=0",
            "model.dropout_features=0",
            "model.context_network.dropout=0",
            "model.context_network.attention_dropout=0",
            "optim.scheduler.warmup=0",
        ],
        tmp_path,
    )
    train(cfg)
    acc = [v for _, v in scalars(tmp_path)["train/accuracy"]]
    assert acc[0] < 0.1
    assert max(acc) >= 0.95, acc


def test_two_process_ddp_cpu_run(tmp_path):
    """Two processes over gloo through the real CLI (Lightning's launcher re-runs the command):
    a probe round at update 0 on rank 0 while rank 1 waits at the barrier, updates and a
    validation, one summary; the checkpoint exports to transformers."""
    proc = run_cli(
        "experiment=demo",
        "trainer=ddp_cpu",
        # a small round: the DDP path of a probe round, not its numbers (test_probes.py)
        "probe.layers=[4]",
        "probe.max_seconds=30",
        "probe.ctc_steps=5",
        "probe.speaker_steps=10",
        "trainer.max_steps=3",
        "trainer.val_check_interval=2",
        "trainer.limit_val_batches=2",
        "data.num_workers=0",
        "data.persistent_workers=false",
        "callbacks.periodic.every_n_train_steps=3",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert "pretraining finished after 3 updates" in proc.stdout
    assert proc.stdout.count("pretraining finished") == 1  # printed by rank 0 only
    assert "probes:       update 0: cer " in proc.stdout

    # the training checkpoint exports to transformers (w2v2-export, run in this process)
    pytest.importorskip("transformers")
    from transformers import Wav2Vec2ForPreTraining

    from w2v2_pretrain.cli.export import main as export

    export([str(tmp_path / "checkpoints" / "last.ckpt"), str(tmp_path / "hf")])

    hf = Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf")
    key = "wav2vec2.encoder.layers.0.attention.q_proj.weight"
    assert torch.equal(
        hf.state_dict()[key],
        ckpt["state_dict"]["model.context_network.layers.0.attention.q_proj.weight"],
    )


@pytest.mark.slow
def test_demo_experiment_end_to_end(tmp_path):
    """The main job as `make demo` runs it: it leaves the early plateau (validation contrastive
    loss at least 0.5 nats below chance ln(K+1), accuracy at least 0.15), every logged quantity
    finite, no codebook collapse, no run-health warning, the summary printed."""
    import math

    proc = run_cli("experiment=demo", f"hydra.run.dir={tmp_path}", timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretraining finished after 600 updates" in proc.stdout
    logged = scalars(tmp_path)
    for tag, values in logged.items():
        if tag != "__images__":
            assert all(math.isfinite(v) for _, v in values), tag
    code_ppl = [v for _, v in logged["val/code_perplexity"]]
    assert min(code_ppl) > 16  # of 2 x 64 entries: no collapse
    chance = logged["val/contrastive_chance"][-1][1]
    assert chance == pytest.approx(math.log(21))
    assert logged["val/contrastive"][-1][1] <= chance - 0.5
    assert logged["val/accuracy"][-1][1] >= 0.15
    assert "warning:" not in proc.stdout
    assert (
        "validation:   loss" in proc.stdout and "TensorBoard:  tensorboard --logdir" in proc.stdout
    )


def test_lr_schedule_warmup_then_linear_decay():
    from w2v2_pretrain.errors import ConfigError
    from w2v2_pretrain.training.schedules import polynomial_decay, warmup_polynomial

    assert warmup_polynomial(0, 4, 10) == 0.25 and warmup_polynomial(3, 4, 10) == 1.0
    assert warmup_polynomial(4, 4, 10) == 1.0 and warmup_polynomial(7, 4, 10) == 0.5
    assert warmup_polynomial(10, 4, 10) == 0.0 and warmup_polynomial(50, 4, 10) == 0.0
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=5e-4)
    sched = polynomial_decay(opt, total_steps=400_000, warmup=0.08)  # fraction: 32k updates
    lrs = []
    for _ in range(32_001):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(5e-4 / 32_000) and lrs[31_999] == pytest.approx(5e-4)
    assert lrs[32_000] == pytest.approx(5e-4)
    with pytest.raises(ConfigError, match="total_steps"):
        polynomial_decay(opt, total_steps=-1)
    with pytest.raises(ConfigError, match="exceeds total_steps"):
        polynomial_decay(opt, total_steps=10, warmup=20)


def test_data_follows_the_models_input_contract(tmp_path):
    """LARGE normalizes its input: the data module follows model.input; setting the data side
    alone against the model is refused (the model would record the wrong contract)."""
    manifests = f"data.manifest_dir={REPO_ROOT / 'data' / 'manifests'}"
    cfg = compose_cfg(
        ["experiment=large_librivox", "trainer.accelerator=cpu", manifests], tmp_path
    )
    datamodule, module, _ = build(cfg)
    assert datamodule.cfg.normalize is True and module.cfg.input.normalize is True
    cfg = compose_cfg([*FAST, "data.normalize=true"], tmp_path)
    from w2v2_pretrain.errors import ConfigError

    with pytest.raises(ConfigError, match="data.normalize=True but model.input.normalize=False"):
        build(cfg)
