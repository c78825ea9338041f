"""fairseq checkpoints, both ways, checked against facts about fairseq's layout and against
transformers' own fairseq conversion code (fairseq itself no longer installs on Python 3.11).

The checkpoints built here follow fairseq's source: ``Wav2Vec2Model``'s modules (conv blocks
``Sequential(conv, dropout, norm, GELU)``, ``encoder.pos_conv.0`` with weight norm over dim 2,
``quantizer.vars`` of shape (1, G*V, d)), its config field names, and the three ways fairseq
has saved them (an argparse namespace; a pickled omegaconf DictConfig; a plain ``cfg`` dict).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import subprocess
import sys
import types
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import write_tone

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.interop.fairseq import export_fairseq
from w2v2_pretrain.model_sources import read_model_source
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.paths import REPO_ROOT

transformers = pytest.importorskip("transformers")

CONV = [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2
E, LAYERS, FFN, G, V, LATENT, FINAL, K_POS, POS_GROUPS = 96, 2, 192, 2, 16, 64, 48, 16, 8


@dataclass(frozen=True)
class Shape:
    """The widths of a fairseq model, by fairseq's option names (default: the small model the
    tests here use); its seven convs have BASE's kernels and strides."""

    conv_channels: int = 128
    encoder_layers: int = LAYERS
    encoder_embed_dim: int = E
    encoder_ffn_embed_dim: int = FFN
    encoder_attention_heads: int = 4
    latent_groups: int = G
    latent_vars: int = V
    latent_dim: int = LATENT  # 0: final_dim
    final_dim: int = FINAL
    conv_pos: int = K_POS
    conv_pos_groups: int = POS_GROUPS

    @property
    def convs(self) -> list[tuple[int, int, int]]:
        c = self.conv_channels
        return [(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2

    @property
    def conv_feature_layers(self) -> str:
        """As fairseq's command line wrote it."""
        c = self.conv_channels
        return f"[({c}, 10, 5)] + [({c}, 3, 2)] * 4 + [({c},2,2)] * 2"

    @property
    def codevector_dim(self) -> int:
        return self.latent_dim or self.final_dim

    def fields(self) -> dict:
        fields = dataclasses.asdict(self)
        del fields["conv_channels"]
        return fields | {"conv_feature_layers": self.conv_feature_layers}


SMALL = Shape()


def fairseq_state(
    mode: str, conv_bias: bool, weight_norm: str, seed: int = 0, shape: Shape = SMALL
) -> dict:
    """A state dict with fairseq ``Wav2Vec2Model``'s names and shapes (random values)."""
    CONV, E, LAYERS, FFN = (
        shape.convs,
        shape.encoder_embed_dim,
        shape.encoder_layers,
        shape.encoder_ffn_embed_dim,
    )
    G, V, LATENT, FINAL = (
        shape.latent_groups,
        shape.latent_vars,
        shape.codevector_dim,
        shape.final_dim,
    )
    K_POS, POS_GROUPS = shape.conv_pos, shape.conv_pos_groups
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    sd = {"mask_emb": r(E)}
    in_dim = 1
    for i, (c, k, _) in enumerate(CONV):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = r(c, in_dim, k)
        if conv_bias:
            sd[f"feature_extractor.conv_layers.{i}.0.bias"] = r(c)
        if mode == "layer_norm":  # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
            sd[f"feature_extractor.conv_layers.{i}.2.1.weight"] = 1 + r(c)
            sd[f"feature_extractor.conv_layers.{i}.2.1.bias"] = r(c)
        elif i == 0:  # Fp32GroupNorm on the first conv only
            sd["feature_extractor.conv_layers.0.2.weight"] = 1 + r(c)
            sd["feature_extractor.conv_layers.0.2.bias"] = r(c)
        in_dim = c
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = r(E, in_dim), r(E)
    sd["quantizer.vars"] = r(1, G * V, LATENT // G)
    sd["quantizer.weight_proj.weight"] = r(G * V, in_dim)
    sd["quantizer.weight_proj.bias"] = r(G * V)
    sd["project_q.weight"], sd["project_q.bias"] = r(FINAL, LATENT), r(FINAL)
    sd["encoder.pos_conv.0.bias"] = r(E)
    g, v = 1 + r(1, 1, K_POS).abs(), r(E, E // POS_GROUPS, K_POS)
    if weight_norm == "legacy":  # nn.utils.weight_norm(conv, dim=2), what fairseq saves
        sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"] = g, v
    else:  # torch's parametrization, as a model re-saved with newer torch names it
        sd["encoder.pos_conv.0.parametrizations.weight.original0"] = g
        sd["encoder.pos_conv.0.parametrizations.weight.original1"] = v
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = r(E, E), r(E)
        sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"] = 1 + r(E), r(E)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(FFN, E), r(FFN)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(E, FFN), r(E)
        sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = 1 + r(E), r(E)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + r(E), r(E)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + r(in_dim), r(in_dim)
    sd["final_proj.weight"], sd["final_proj.bias"] = r(FINAL, E), r(FINAL)
    return sd


def model_fields(mode: str, conv_bias: bool, shape: Shape = SMALL) -> dict:
    """fairseq ``Wav2Vec2Config`` fields of the model above (fairseq's names)."""
    return shape.fields() | {
        "_name": "wav2vec2",
        "extractor_mode": "default" if mode == "group" else "layer_norm",
        "activation_fn": "gelu",
        "dropout": 0.05,
        "attention_dropout": 0.07,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.02,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "layer_norm_first": mode == "layer_norm",
        "conv_bias": conv_bias,
        "logit_temp": 0.1,
        "quantize_targets": True,
        "quantize_input": False,
        "same_quantizer": False,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.65,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_channel_prob": 0.0,
        "num_negatives": 100,
        "cross_sample_negatives": 0,
        "codebook_negatives": 0,
        "latent_temp": [2.0, 0.5, 0.999995],
    }


def fairseq_checkpoint(
    form: str,
    mode: str = "group",
    conv_bias: bool = False,
    weight_norm: str = "legacy",
    shape: Shape = SMALL,
) -> dict:
    """The whole file, in one of the three ways fairseq has saved it."""
    model = model_fields(mode, conv_bias, shape)
    task = {
        "_name": "audio_pretraining",
        "data": "/data",
        "sample_rate": 16000,
        "normalize": mode == "layer_norm",
        "max_sample_size": 250000,
    }
    criterion = {
        "_name": "wav2vec",
        "infonce": True,
        "loss_weights": [0.1, 10.0],
        "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
    }
    ckpt = {
        "model": fairseq_state(mode, conv_bias, weight_norm, shape=shape),
        "optimizer_history": [
            {
                "criterion_name": "Wav2vecCriterion",
                "optimizer_name": "FP16Optimizer",
                "lr_scheduler_state": {"best": 6.5},
                "num_updates": 400_000,
            }
        ],
        "extra_state": {
            "train_iterator": {"epoch": 45, "iterations_in_epoch": 0},
            "val_loss": np.float64(2.15),
            "previous_training_time": 1.2e5,
        },
    }
    if form == "args":  # fairseq <= 0.10: one flat namespace, some values as Python source
        flat = {k: v for k, v in model.items() if k != "_name"} | {
            "arch": "wav2vec2",
            "task": "audio_pretraining",
            "criterion": "wav2vec",
            "latent_temp": "(2,0.5,0.999995)",
            "loss_weights": "[0.1, 10]",
            "infonce": True,
            "normalize": task["normalize"],
            "sample_rate": 16000,
            "max_sample_size": 250000,
            "lr": [0.0005],
            "max_update": 400_000,
        }
        return ckpt | {"args": argparse.Namespace(**flat), "last_optimizer_state": {}}
    cfg = {"common": {"fp16": True}, "model": model, "task": task, "criterion": criterion}
    if form == "dictconfig":  # Oct 2020 - Mar 2021: the omegaconf object itself
        from omegaconf import OmegaConf

        return ckpt | {"args": None, "cfg": OmegaConf.create(cfg), "task_state": {}}
    return ckpt | {"args": None, "cfg": cfg, "criterion": None, "task_state": {}}


FORMS = [
    ("dict", "group", False, "legacy"),
    ("dictconfig", "group", False, "legacy"),
    ("args", "group", False, "legacy"),
    ("dict", "layer_norm", True, "legacy"),
    ("args", "layer_norm", True, "parametrized"),
    ("dictconfig", "group", False, "parametrized"),
]


@pytest.mark.parametrize("form, mode, conv_bias, weight_norm", FORMS)
def test_reads_fairseq_checkpoints(tmp_path, form, mode, conv_bias, weight_norm):
    path = tmp_path / "checkpoint_best.pt"
    ckpt = fairseq_checkpoint(form, mode, conv_bias, weight_norm)
    torch.save(ckpt, path)
    source = read_model_source(path)
    cfg = source.config
    assert source.kind == "fairseq" and source.num_updates == 400_000
    assert cfg.feature_encoder.conv_layers == [list(c) for c in CONV]
    assert cfg.feature_encoder.mode == ("group_norm" if mode == "group" else "layer_norm")
    assert (
        cfg.feature_encoder.conv_bias is conv_bias and cfg.feature_encoder.feature_grad_mult == 0.1
    )
    cn = cfg.context_network
    assert (cn.num_layers, cn.embed_dim, cn.ffn_dim, cn.num_heads) == (LAYERS, E, FFN, 4)
    assert (cn.dropout, cn.attention_dropout, cn.layerdrop) == (0.05, 0.07, 0.02)
    assert cn.layer_norm_first is (mode == "layer_norm") and (cn.conv_pos, cn.conv_pos_groups) == (
        K_POS,
        POS_GROUPS,
    )
    q = cfg.quantizer
    assert (q.num_groups, q.num_vars, q.codevector_dim) == (G, V, LATENT)
    assert q.temperature == [2.0, 0.5, 0.999995] and cfg.final_dim == FINAL
    assert (cfg.objective.diversity_weight, cfg.objective.feature_penalty_weight) == (0.1, 10.0)
    assert cfg.input.normalize is (mode == "layer_norm") and cfg.input.sample_rate == 16000
    # tensors land where fairseq's modules put them
    sd, fs = source.state_dict, ckpt["model"]
    assert torch.equal(sd["quantizer.codebook"], fs["quantizer.vars"].view(G, V, -1))
    assert torch.equal(sd["mask_embedding"], fs["mask_emb"])
    assert torch.equal(
        sd["context_network.layers.1.attention_layer_norm.weight"],
        fs["encoder.layers.1.self_attn_layer_norm.weight"],
    )
    g = fs.get(
        "encoder.pos_conv.0.weight_g",
        fs.get("encoder.pos_conv.0.parametrizations.weight.original0"),
    )
    assert torch.equal(sd["context_network.pos_conv.conv.parametrizations.weight.original0"], g)
    norm = "2.1" if mode == "layer_norm" else "2"
    assert torch.equal(
        sd["feature_encoder.conv_layers.0.norm.bias"],
        fs[f"feature_extractor.conv_layers.0.{norm}.bias"],
    )
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(sd, strict=True)


# -- transformers' own conversion code as an independent check -------------------------------

ORACLE = "transformers==4.46.3"  # the last wheels that ship the fairseq conversion script
SCRIPT = "transformers/models/wav2vec2/convert_wav2vec2_original_pytorch_checkpoint_to_pytorch.py"


@pytest.fixture(scope="session")
def hf_conversion(tmp_path_factory):
    """transformers' ``convert_wav2vec2_original_pytorch_checkpoint_to_pytorch`` module, read
    from its published wheel (`make install` keeps it in .venv/oracles), with the two fairseq
    imports it makes at the top (and never uses in the functions called here) stubbed."""
    cache = REPO_ROOT / ".venv" / "oracles"
    wheels = sorted(cache.glob("transformers-4.46.3-*.whl"))
    if not wheels:
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--no-deps",
                "-d",
                str(cache),
                ORACLE,
            ],
            capture_output=True,
            text=True,
            timeout=300,
        )
        wheels = sorted(cache.glob("transformers-4.46.3-*.whl"))
        if not wheels:
            pytest.skip(f"could not fetch {ORACLE} from PyPI: {proc.stderr.strip()[-300:]}")
    source = tmp_path_factory.mktemp("oracle") / "convert_wav2vec2.py"
    with zipfile.ZipFile(wheels[0]) as whl:
        source.write_bytes(whl.read(SCRIPT))
    fairseq_stub = types.ModuleType("fairseq")
    data_stub = types.ModuleType("fairseq.data")
    data_stub.Dictionary = object
    saved = {k: sys.modules.get(k) for k in ("fairseq", "fairseq.data")}
    sys.modules.update({"fairseq": fairseq_stub, "fairseq.data": data_stub})
    try:
        spec = importlib.util.spec_from_file_location("hf_convert_wav2vec2", source)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v
    return module


class FairseqStandIn:
    """What transformers' converter reads of a fairseq model: its state dict."""

    def __init__(self, state: dict) -> None:
        self.state = state

    def state_dict(self) -> dict:
        return self.state


@pytest.mark.parametrize(
    "form, mode, conv_bias", [("dict", "group", False), ("args", "layer_norm", True)]
)
def test_mapping_agrees_with_transformers_conversion(
    tmp_path, hf_conversion, form, mode, conv_bias
):
    """fairseq -> ours -> transformers (our mapping twice) equals fairseq -> transformers
    (transformers' converter), tensor for tensor; and both models compute the same."""
    from w2v2_pretrain.interop.hf import to_hf_config, to_hf_model

    ckpt = fairseq_checkpoint(form, mode, conv_bias)
    torch.save(ckpt, tmp_path / "fs.pt")
    source = read_model_source(tmp_path / "fs.pt")
    ours = source.model().eval()

    theirs = transformers.Wav2Vec2ForPreTraining(to_hf_config(source.config)).eval()
    hf_conversion.recursively_load_weights(FairseqStandIn(ckpt["model"]), theirs, True)
    expected = to_hf_model(ours).state_dict()
    got = theirs.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    x = torch.randn(2, 12_000)
    with torch.no_grad():
        torch.testing.assert_close(
            ours.extract(x).hidden, theirs.wav2vec2(x).last_hidden_state, rtol=1e-5, atol=1e-5
        )


# -- ours -> fairseq -> ours --------------------------------------------------------------


@pytest.mark.parametrize("mode", ["group_norm", "layer_norm"])
def test_round_trip_through_fairseq_is_exact(tmp_path, mode):
    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.feature_encoder.mode = mode
    cfg.feature_encoder.conv_bias = mode == "layer_norm"
    cfg.feature_encoder.feature_grad_mult = 0.1
    cfg.input.normalize = mode == "layer_norm"
    cfg.objective.num_negatives = 50
    cfg.quantizer.temperature = [2.0, 0.1, 0.99999]
    model = Wav2Vec2Model(cfg)
    export_fairseq(model, tmp_path / "fs.pt", num_updates=77)
    raw = torch.load(tmp_path / "fs.pt", weights_only=True)  # plain data only: fairseq's own form
    assert raw["cfg"]["model"]["_name"] == "wav2vec2" and raw["args"] is None
    assert raw["optimizer_history"][-1]["num_updates"] == 77
    assert raw["model"]["quantizer.vars"].shape == (1, 128, 64)
    assert "encoder.pos_conv.0.weight_g" in raw["model"]  # fairseq loads strictly by these names
    back = read_model_source(tmp_path / "fs.pt")
    assert back.config.to_dict() == cfg.validate().to_dict()
    assert back.num_updates == 77
    for key, value in model.state_dict().items():
        assert torch.equal(back.state_dict[key], value), key


def test_export_and_extract_through_the_command_line(tmp_path):
    """w2v2-export --format fairseq writes a file that w2v2-extract and w2v2-export read back."""
    from w2v2_pretrain.model_files import save_model

    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny")).eval()
    save_model(model, tmp_path / "model.pt")
    run = [sys.executable, "-m"]
    proc = subprocess.run(
        [
            *run,
            "w2v2_pretrain.cli.export",
            str(tmp_path / "model.pt"),
            str(tmp_path / "fs.pt"),
            "--format",
            "fairseq",
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    assert "load_model_ensemble_and_task" in proc.stdout
    write_tone(tmp_path / "a.flac", 1.0)
    wav = sf.read(tmp_path / "a.flac", dtype="float32", always_2d=True)[0]  # as stored
    proc = subprocess.run(
        [
            *run,
            "w2v2_pretrain.cli.extract",
            str(tmp_path / "fs.pt"),
            str(tmp_path / "a.flac"),
            str(tmp_path / "feats"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    with torch.no_grad():
        expected = model.extract(torch.from_numpy(wav[:, 0])[None]).hidden[0].numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "feats" / "a.npy"), expected, rtol=1e-4, atol=1e-5
    )


# -- refusals -------------------------------------------------------------------------------


class Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


def test_refuses_what_it_cannot_or_must_not_load(tmp_path):
    cases = {}
    ckpt = fairseq_checkpoint("dict")
    ckpt["model"] = {
        f"w2v_encoder.w2v_model.{k}": v
        for k, v in ckpt["model"].items()
        if not k.startswith(("quantizer", "project_q", "final_proj"))
    }
    cases["finetuned.pt"] = (ckpt, "a fine-tuned model (w2v_encoder.*)")
    ckpt = fairseq_checkpoint("dict")
    for k in [k for k in ckpt["model"] if k.startswith(("quantizer", "project_q"))]:
        del ckpt["model"][k]
    cases["no_quantizer.pt"] = (ckpt, "no quantizer weights")
    ckpt = fairseq_checkpoint("dict")
    ckpt["cfg"]["model"]["target_glu"] = True
    cases["glu.pt"] = (ckpt, "target_glu=True: this architecture cannot be mapped")
    ckpt = fairseq_checkpoint("args")
    ckpt["args"].conv_feature_layers = "__import__('os').system('true')"
    cases["source.pt"] = (ckpt, "not a literal this reader takes")
    marker = tmp_path / "code-ran"
    ckpt = fairseq_checkpoint("dict")
    ckpt["extra_state"]["trap"] = Payload(marker)
    cases["evil.pt"] = (ckpt, "refused: not plain tensors and data (it holds posix.system)")
    for name, (obj, message) in cases.items():
        torch.save(obj, tmp_path / name)
        with pytest.raises(DataError) as e:
            read_model_source(tmp_path / name)
        assert str(tmp_path / name) in str(e.value) and message in str(e.value), (
            name,
            str(e.value),
        )
        assert "\n" not in str(e.value)
    assert not marker.exists()
