"""fairseq checkpoints, both ways, checked against facts about fairseq's layout and against
transformers' own fairseq conversion code (fairseq itself no longer installs on Python 3.11).

The checkpoints are built as fairseq lays them out (tests/fairseq_files.py).
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from fairseq_files import (
    CONV,
    FFN,
    FINAL,
    K_POS,
    LATENT,
    LAYERS,
    POS_GROUPS,
    E,
    G,
    V,
    fairseq_checkpoint,
)
from helpers import write_tone

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.interop.fairseq import export_fairseq
from w2v2_pretrain.model_sources import read_model_source
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.paths import REPO_ROOT

transformers = pytest.importorskip("transformers")

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
