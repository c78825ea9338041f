"""Run-health warnings, each driven by constructed metrics, and their way to the user."""

from __future__ import annotations

import math

import pytest

from w2v2_pretrain.training.config import HealthConfig
from w2v2_pretrain.training.health import RunHealth, chance_loss

HEALTHY = dict(contrastive=2.0, accuracy=0.3, code_perplexity=400.0, prob_perplexity=450.0)


def health(**cfg) -> RunHealth:
    return RunHealth(
        config=HealthConfig(**cfg), num_distractors=100, num_codevectors=640, warmup_updates=100
    )


def kinds(found) -> list[str]:
    return [w.kind for w in found]


def test_chance_is_ln_k_plus_one_and_fairseqs_bits():
    assert chance_loss(100) == math.log(101)
    assert round(chance_loss(100) / math.log(2), 3) == 6.658  # fairseq's flat line, in bits


def test_healthy_metrics_warn_nothing():
    h = health()
    for step in range(0, 500, 10):
        assert h.on_train_metrics(step, **HEALTHY, grad_norm=1.0 + (step % 3) * 0.1) == []
    assert h.on_validation(400, contrastive=3.0) == []


def test_plateau_after_warmup_warns_once_and_again_after_recovery():
    h = health(plateau_updates=300, plateau_margin=0.05)
    near = chance_loss(100) - 0.01
    assert h.on_validation(50, contrastive=near) == []  # in warm-up: not counted
    assert h.on_validation(300, contrastive=near) == []  # 200 updates after warm-up
    found = h.on_validation(400, contrastive=near)
    assert kinds(found) == ["plateau"] and found[0].step == 400
    msg = found[0].message
    assert "4.605 nats" in msg and "chance ln(100+1) = 4.615" in msg and "6.658 bits" in msg
    assert "model.objective.num_negatives" in msg  # says what to try
    assert h.on_validation(500, contrastive=near) == []  # once per episode
    assert h.on_validation(600, contrastive=3.5) == []  # left the plateau
    assert h.on_validation(700, contrastive=near) == []  # back, but only just
    assert kinds(h.on_validation(1000, contrastive=near)) == ["plateau"]


def test_codebook_collapse():
    h = health(collapse_fraction=0.1)
    assert h.on_train_metrics(10, **HEALTHY) == []
    collapsed = HEALTHY | dict(code_perplexity=2.0, prob_perplexity=2.1)
    found = h.on_train_metrics(20, **collapsed)
    assert kinds(found) == ["collapse"]
    assert "code perplexity 2.0 of 640" in found[0].message
    assert "feature_penalty_weight=0" in found[0].message
    assert "diversity_weight" in found[0].message
    assert h.on_train_metrics(30, **collapsed) == []


def test_trivial_solution():
    h = health()
    trivial = HEALTHY | dict(accuracy=1.0, contrastive=0.001)
    found = h.on_train_metrics(40, **trivial)
    assert kinds(found) == ["trivial"] and "accuracy 1.000" in found[0].message
    # a good but not trivial run does not trip it
    assert health().on_train_metrics(40, **HEALTHY | dict(accuracy=0.98, contrastive=0.2)) == []


def test_gradient_spike_and_nonfinite():
    h = health(grad_spike_factor=10.0)
    for step in range(25):
        assert h.on_train_metrics(step, **HEALTHY, grad_norm=1.0) == []
    assert kinds(h.on_train_metrics(25, **HEALTHY, grad_norm=50.0)) == ["grad_spike"]
    assert kinds(h.on_train_metrics(26, **HEALTHY, grad_norm=float("nan"))) == ["nonfinite"]
    assert h.on_train_metrics(27, **HEALTHY, grad_norm=float("inf")) == []  # same episode
    # early norms only gather: no median yet, no spike
    assert health().on_train_metrics(0, **HEALTHY, grad_norm=1e6) == []


def test_warnings_reach_log_tensorboard_and_summary(tmp_path):
    """Through the real command line: a threshold that every update trips (collapse below
    100% of G x V) warns once, in the log, as TensorBoard text and in the summary; the summary
    shows chance beside the validation loss, in nats and fairseq's bits."""
    from helpers import FAST, error_line, run_cli, small_manifests
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    proc = run_cli(
        *FAST,
        f"data.manifest_dir={small_manifests(tmp_path, 6)}",
        "trainer.max_steps=3",
        "trainer.log_every_n_steps=1",
        "health.collapse_fraction=1.0",
        f"hydra.run.dir={tmp_path / 'run'}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = proc.stdout + proc.stderr
    assert logged.count("run health: codebook collapse at update 0") == 1
    assert "  warning:      codebook collapse at update 0" in proc.stdout
    chance = math.log(21)  # the demo's 20 distractors
    assert f"chance:       contrastive {chance:.3f} nats = ln(K+1)" in proc.stdout
    assert f"(chance {chance / math.log(2):.3f})" in proc.stdout
    ea = EventAccumulator(str(tmp_path / "run" / "tensorboard"), size_guidance={"tensors": 0})
    ea.Reload()
    assert "health/collapse/text_summary" in ea.Tags()["tensors"]
    line = error_line(
        [*FAST, "health.colapse_fraction=0.2"], tmp_path / "x"
    )  # as the CLI finds it
    assert line == "error: health.colapse_fraction: no such setting; did you mean " + (
        "health.collapse_fraction?"
    )


def test_layer_norm_with_the_feature_penalty_is_flagged_at_start(caplog):
    """The combination the slow demo run below shows collapsing is warned of when a run is
    built (once per run)."""
    from w2v2_pretrain.data.config import DataConfig
    from w2v2_pretrain.models import preset
    from w2v2_pretrain.training.checks import check_combinations

    model = preset("tiny")
    model.feature_encoder.mode = "layer_norm"
    model.objective.num_negatives = 20  # as the demo
    data = DataConfig(manifest_dir="m", min_sample_size=32000, max_sample_size=40000)
    with caplog.at_level("WARNING", logger="w2v2_pretrain.training.checks"):
        check_combinations(model, data)
    assert "feature_encoder.mode=layer_norm with model.objective.feature_penalty_weight=10" in (
        caplog.text
    )
    assert "collapse the codebooks" in caplog.text and "LARGE uses 0" in caplog.text
    model.objective.feature_penalty_weight = 0.0
    caplog.clear()
    with caplog.at_level("WARNING", logger="w2v2_pretrain.training.checks"):
        check_combinations(model, data)
    assert "layer_norm" not in caplog.text


# a demo run of ~100 updates per variant: the dynamics behind the warnings (slow; the default
# run covers the warning's path with test_warnings_reach_log_tensorboard_and_summary and the
# start-up flag above)
@pytest.mark.slow
@pytest.mark.parametrize("normalize", [False, True])
def test_layer_norm_collapse_on_the_demo_is_reported_within_50_updates(tmp_path, normalize):
    """The demo with LARGE's layer-norm encoder (and LARGE's normalized input) collapses its
    codebooks within a few dozen updates (with feature penalty 10). The run must say so within
    50 updates of the logged code perplexity falling below 10% of G x V, and never step on a
    non-finite loss: every logged loss stays finite. The combination is flagged at start-up."""
    import re

    from helpers import run_cli, scalars

    proc = run_cli(
        "experiment=demo",
        "model.feature_encoder.mode=layer_norm",
        f"model.input.normalize={str(normalize).lower()}",
        "trainer.max_steps=30",
        f"hydra.run.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    logged = scalars(tmp_path)
    collapsed = [step for step, ppl in logged["train/code_perplexity"] if ppl < 0.1 * 2 * 64]
    assert collapsed, "the layer-norm demo no longer collapses: update this test and the README"
    warned = re.search(r"run health: codebook collapse at update (\d+)", proc.stdout + proc.stderr)
    assert warned, proc.stdout[-3000:]
    assert int(warned.group(1)) - collapsed[0] <= 50
    assert all(math.isfinite(v) for _, v in logged["train/loss"])
    assert "  warning:      codebook collapse at update" in proc.stdout
    startup = "feature_penalty_weight=10: the penalty can make the features"
    assert startup in proc.stdout + proc.stderr
