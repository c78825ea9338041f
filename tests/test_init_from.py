"""Continued pretraining: init_from a transformers folder, a fairseq checkpoint or ours."""

from __future__ import annotations

import logging
import shutil

import pytest
import torch
from helpers import FAST, compose_cfg, error_line, small_manifests

from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.interop.hf import to_hf_state_dict
from w2v2_pretrain.train import build, train

transformers = pytest.importorskip("transformers")


def hf_pretraining_folder(path, **overrides):
    """A Wav2Vec2ForPreTraining saved by transformers itself (another geometry than ours), with
    transformers' fine-tuning default of masking (mask_time_prob 0.05) in its config."""
    config = transformers.Wav2Vec2Config(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        conv_dim=[64] * 7,
        conv_kernel=[10, 3, 3, 3, 3, 2, 2],
        conv_stride=[5, 2, 2, 2, 2, 2, 2],
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        num_codevectors_per_group=16,
        num_codevector_groups=2,
        codevector_dim=32,
        proj_codevector_dim=32,
        hidden_dropout=0.07,
        **overrides,
    )
    torch.manual_seed(3)
    model = transformers.Wav2Vec2ForPreTraining(config).eval()
    model.save_pretrained(path)
    transformers.Wav2Vec2FeatureExtractor(do_normalize=False).save_pretrained(path)
    return model


def assert_same_outputs(module, theirs, samples: int) -> None:
    """Our model (in ``module``) and the transformers model ``theirs`` give the same last
    hidden states on two random clips of ``samples``."""
    module.model.eval()
    x = torch.randn(2, samples)
    with torch.no_grad():
        torch.testing.assert_close(
            module.model.extract(x).hidden,
            theirs.wav2vec2(x).last_hidden_state,
            rtol=1e-5,
            atol=1e-5,
        )


def test_init_from_transformers_keeps_its_model_and_the_runs_settings(tmp_path):
    theirs = hf_pretraining_folder(tmp_path / "hf")
    manifests = small_manifests(tmp_path, 6)
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            f"init_from={tmp_path / 'hf'}",
            "model.context_network.layerdrop=0.03",
        ],
        tmp_path / "run",
    )
    _, module, _ = build(cfg)
    got = module.cfg
    # the architecture is the source's
    assert got.context_network.embed_dim == 64 and got.context_network.num_layers == 2
    assert got.feature_encoder.conv_layers[0] == [64, 10, 5] and got.final_dim == 32
    assert got.quantizer.num_vars == 16 and got.quantizer.codevector_dim == 32
    # settings: the run's where it set them (demo's dropout 0, masking, 20 distractors; the
    # command line's LayerDrop), the source's where it recorded them and the run did not
    assert got.context_network.dropout == 0.0 and got.context_network.layerdrop == 0.03
    assert got.masking.mask_prob == 0.5  # never transformers' fine-tuning 0.05
    assert got.objective.num_negatives == 20
    assert got.objective.feature_penalty_weight == 10.0  # transformers has none: the run's
    assert got.quantizer.temperature[0] == got.quantizer.temperature[1] == 0.5  # at its end
    # the weights are the source's: same tensors, same outputs
    expected = theirs.state_dict()
    for key, value in to_hf_state_dict(module.model.state_dict()).items():
        assert torch.equal(value, expected[key]), key
    assert_same_outputs(module, theirs, 16_000)

    changed = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={manifests}",
            f"init_from={tmp_path / 'hf'}",
            "model.context_network.num_layers=6",
        ],
        tmp_path / "run2",
    )
    with pytest.raises(
        ConfigError,
        match=r"model.context_network.num_layers=6: the architecture "
        r"comes from init_from \(context_network.num_layers=2\)",
    ):
        build(changed)


def test_init_from_a_layer_norm_transformers_model_takes_larges_recipe(tmp_path):
    """A LARGE-kind source (layer-norm encoder, pre-LN) under a run whose preset is BASE-kind:
    what transformers does not record comes from LARGE's recipe, not BASE's: feature penalty 0
    (BASE's 10 collapses a layer-norm encoder's codebooks), feature_grad_mult 1, the Gumbel
    floor 0.1. What the run sets still wins."""
    hf_pretraining_folder(
        tmp_path / "hf", feat_extract_norm="layer", do_stable_layer_norm=True, conv_bias=True
    )
    manifests = small_manifests(tmp_path, 6)
    common = [*FAST, f"data.manifest_dir={manifests}", f"init_from={tmp_path / 'hf'}"]
    got = build(compose_cfg(common, tmp_path / "run"))[1].cfg
    assert got.feature_encoder.mode == "layer_norm" and got.context_network.layer_norm_first
    assert got.objective.feature_penalty_weight == 0.0
    assert got.feature_encoder.feature_grad_mult == 1.0
    assert got.quantizer.temperature[1] == 0.1
    assert got.masking.mask_prob == 0.5  # the demo sets it: the run's
    set_by_run = compose_cfg([*common, "model.objective.feature_penalty_weight=2"], tmp_path)
    assert build(set_by_run)[1].cfg.objective.feature_penalty_weight == 2.0


def test_init_from_fairseq_and_resume_without_the_source(tmp_path, caplog):
    """A run started from a fairseq checkpoint trains with a fresh step; its requeue resumes
    from its own checkpoint even after the source is gone."""
    from fairseq_files import fairseq_checkpoint

    from w2v2_pretrain.model_sources import read_model_source

    source = tmp_path / "wav2vec_small.pt"
    torch.save(fairseq_checkpoint("args"), source)
    manifests = small_manifests(tmp_path, 6)
    run = tmp_path / "run"
    common = [
        *FAST,
        f"data.manifest_dir={manifests}",
        f"init_from={source}",
        "trainer.limit_val_batches=0",
        f"hydra.run.dir={run}",
        "resume=true",
    ]
    cfg = compose_cfg([*common, "trainer.max_steps=2"], run)
    _, module, _ = build(cfg)
    fs = read_model_source(source)
    for key, value in fs.state_dict.items():
        assert torch.equal(module.model.state_dict()[key], value), key
    # fairseq recorded 400k updates: the temperature goes on from max(2 * d^400k, 0.5)
    assert module.cfg.quantizer.temperature[0] == pytest.approx(max(2 * 0.999995**400_000, 0.5))

    # the runs in-process, as the CLI runs them (train on the composed config)
    with caplog.at_level(logging.INFO):
        assert train(compose_cfg([*common, "trainer.max_steps=2"], run)).global_step == 2
    assert "starting from the fairseq weights" in caplog.text
    first = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 2  # a fresh step, not fairseq's 400k
    shutil.move(source, tmp_path / "gone.pt")
    assert train(compose_cfg([*common, "trainer.max_steps=4"], run)).global_step == 4
    assert torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)["global_step"] == 4


def test_init_from_refuses_a_model_saved_for_fine_tuning(tmp_path):
    config = transformers.Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[32] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
        vocab_size=12,
    )
    transformers.Wav2Vec2ForCTC(config).save_pretrained(tmp_path / "ctc")
    # the lines the CLI prints, found in-process as it finds them (helpers.error_line)
    line = error_line([*FAST, f"init_from={tmp_path / 'ctc'}"], tmp_path / "run")
    assert line.startswith(f"error: {tmp_path / 'ctc'}: no quantizer weights")
    assert "Wav2Vec2ForCTC saved for fine-tuning" in line
    missing = error_line(
        [
            "experiment=continue_pretraining",
            f"data.manifest_dir={small_manifests(tmp_path, 2)}",
        ],
        tmp_path / "r2",
    )
    assert missing.startswith("error: init_from is required by experiment=continue_pretraining")


# -- XLS-R: the released key layout at a width and depth this machine runs -------------------

# XLS-R 1B's kind of model (feat_extract_norm "layer", conv bias, stable layer norm, 16 heads,
# 2 x 320 codevectors, codevector_dim = proj_codevector_dim) at a small width and depth
XLSR_SMALL = dict(
    feat_extract_norm="layer",
    conv_bias=True,
    do_stable_layer_norm=True,
    num_attention_heads=16,
    num_codevector_groups=2,
    num_codevectors_per_group=320,
    hidden_size=64,
    num_hidden_layers=3,
    intermediate_size=256,
    conv_dim=[32] * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=16,
    codevector_dim=48,
    proj_codevector_dim=48,
    hidden_dropout=0.0,
    attention_dropout=0.0,
    feat_proj_dropout=0.0,
)


def xlsr_like(embed_dim: int, num_layers: int, ffn_dim: int, final_dim: int):
    """The xlsr_1b preset with another width and depth (what the small sources below hold)."""
    from w2v2_pretrain.models import preset

    cfg = preset("xlsr_1b")
    cn = cfg.context_network
    cn.embed_dim, cn.num_layers, cn.ffn_dim = embed_dim, num_layers, ffn_dim
    cfg.final_dim = cfg.quantizer.codevector_dim = final_dim
    return cfg


def assert_xlsr_kind(got, expected) -> None:
    """The architecture and the settings no source records are XLS-R's (LARGE's recipe)."""
    assert got.feature_encoder == expected.feature_encoder
    q, want = got.quantizer, expected.quantizer
    assert (q.num_groups, q.num_vars, q.codevector_dim) == (want.num_groups, want.num_vars, 48)
    for name in ("embed_dim", "num_layers", "ffn_dim", "num_heads", "layer_norm_first"):
        assert getattr(got.context_network, name) == getattr(expected.context_network, name)
    assert got.final_dim == expected.final_dim and got.input.normalize


def test_init_from_an_xlsr_shaped_transformers_folder_loads_every_tensor(tmp_path):
    """A Wav2Vec2ForPreTraining of XLS-R 1B's layout saved by transformers itself: the run
    takes its architecture, every tensor exactly, and computes what transformers computes."""
    config = transformers.Wav2Vec2Config(**XLSR_SMALL, conv_kernel=[10, 3, 3, 3, 3, 2, 2])
    torch.manual_seed(5)
    theirs = transformers.Wav2Vec2ForPreTraining(config).eval()
    theirs.save_pretrained(tmp_path / "hf")
    transformers.Wav2Vec2FeatureExtractor(
        do_normalize=True, return_attention_mask=True
    ).save_pretrained(tmp_path / "hf")
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={small_manifests(tmp_path, 4)}",
            "data.normalize=true",  # the source normalizes its input
            f"init_from={tmp_path / 'hf'}",
        ],
        tmp_path / "run",
    )
    module = build(cfg)[1]
    expected = xlsr_like(64, 3, 256, 48)
    expected.feature_encoder.conv_layers = [
        [32, k, s] for _, k, s in expected.feature_encoder.conv_layers
    ]
    expected.context_network.conv_pos, expected.context_network.conv_pos_groups = 16, 16
    assert_xlsr_kind(module.cfg, expected)
    # transformers records no Gumbel schedule: XLS-R's (floor 0.1), from its end
    assert module.cfg.quantizer.temperature == [0.1, 0.1, 0.999995]
    state = theirs.state_dict()
    ours = to_hf_state_dict(module.model.state_dict())
    assert set(ours) == {k for k in state if not k.startswith(("lm_head", "dropout"))}
    for key, value in ours.items():
        assert torch.equal(value, state[key]), key
    assert_same_outputs(module, theirs, 8000)


def test_init_from_an_xlsr_shaped_fairseq_checkpoint_loads_every_tensor(tmp_path):
    """A fairseq checkpoint with XLS-R's layout (``extractor_mode=layer_norm``: the conv block's
    norm at ``conv_layers.i.2.1``; conv biases; ``layer_norm_first`` with ``encoder.layer_norm``;
    ``latent_dim`` 0, so the codevectors are ``final_dim`` wide; the cfg-dict form fairseq saved
    XLS-R in) at a small width and depth: every tensor lands where it belongs."""
    from fairseq_files import Shape, fairseq_checkpoint

    shape = Shape(
        conv_channels=32,
        encoder_layers=3,
        encoder_embed_dim=64,
        encoder_ffn_embed_dim=256,
        encoder_attention_heads=16,
        latent_groups=2,
        latent_vars=320,
        latent_dim=0,
        final_dim=48,
        conv_pos=16,
        conv_pos_groups=16,
    )
    ckpt = fairseq_checkpoint("dict", "layer_norm", conv_bias=True, shape=shape)
    ckpt["cfg"]["model"]["feature_grad_mult"] = 1.0
    ckpt["cfg"]["criterion"]["loss_weights"] = [0.1, 0.0]
    source = tmp_path / "xlsr2_small.pt"
    torch.save(ckpt, source)
    cfg = compose_cfg(
        [
            *FAST,
            f"data.manifest_dir={small_manifests(tmp_path, 4)}",
            "data.normalize=true",
            f"init_from={source}",
        ],
        tmp_path / "run",
    )
    module = build(cfg)[1]
    expected = xlsr_like(64, 3, 256, 48)
    expected.feature_encoder.conv_layers = [list(c) for c in shape.convs]
    expected.context_network.conv_pos, expected.context_network.conv_pos_groups = 16, 16
    assert_xlsr_kind(module.cfg, expected)
    assert module.cfg.objective.feature_penalty_weight == 0.0  # the source's loss_weights
    fs, ours = ckpt["model"], module.model.state_dict()
    assert len(ours) == len(fs)  # one of ours for each of fairseq's
    assert torch.equal(ours["quantizer.codebook"], fs["quantizer.vars"].view(2, 320, 24))
    assert torch.equal(
        ours["feature_encoder.conv_layers.6.norm.weight"],
        fs["feature_extractor.conv_layers.6.2.1.weight"],
    )
    assert torch.equal(
        ours["feature_encoder.conv_layers.3.conv.bias"],
        fs["feature_extractor.conv_layers.3.0.bias"],
    )
    assert torch.equal(ours["context_network.layer_norm.bias"], fs["encoder.layer_norm.bias"])
    assert torch.equal(
        ours["context_network.layers.2.ffn.fc2.weight"], fs["encoder.layers.2.fc2.weight"]
    )
    assert torch.equal(
        ours["context_network.pos_conv.conv.parametrizations.weight.original1"],
        fs["encoder.pos_conv.0.weight_v"],
    )
