"""``w2v2-export`` and ``w2v2-extract`` through their real command lines."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import write_tone

transformers = pytest.importorskip("transformers")

from w2v2_pretrain.checkpoint import load_model, save_model  # noqa: E402
from w2v2_pretrain.models import Wav2Vec2Model, preset  # noqa: E402


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = Wav2Vec2Model(preset("tiny")).eval()
    save_model(model, tmp / "model.pt")
    proc = run("w2v2_pretrain.cli.export", str(tmp / "model.pt"), str(tmp / "hf"))
    assert proc.returncode == 0, proc.stderr
    return model, tmp


def test_export_loads_in_transformers_and_back(exported):
    model, tmp = exported
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp / "hf").eval()
    x = torch.randn(2, 20_000)
    with torch.no_grad():
        ours = model.extract(x).hidden
        theirs = hf.wav2vec2(x).last_hidden_state
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)
    back = load_model(tmp / "hf")
    assert back.cfg.context_network == model.cfg.context_network
    for k, v in model.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k


def test_extract_manifest_equals_transformers(exported, tmp_path):
    model, tmp = exported
    root = tmp_path / "audio"
    write_tone(root / "1" / "2" / "1-2-0000.flac", 1.3)
    write_tone(root / "1" / "2" / "1-2-0001.flac", 0.7, seed=1)
    # what the files hold (16-bit PCM), as the extractor reads them
    a = sf.read(root / "1" / "2" / "1-2-0000.flac", dtype="float32", always_2d=True)[0]
    b = sf.read(root / "1" / "2" / "1-2-0001.flac", dtype="float32", always_2d=True)[0]
    (tmp_path / "test.tsv").write_text(
        f"{root}\n1/2/1-2-0000.flac\t{len(a)}\n1/2/1-2-0001.flac\t{len(b)}\n"
    )
    out = tmp_path / "feats"
    proc = run("w2v2_pretrain.cli.extract", str(tmp / "hf"), str(tmp_path / "test.tsv"), str(out))
    assert proc.returncode == 0, proc.stderr
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp / "hf").eval()
    for rel, wav in (("1-2-0000", a), ("1-2-0001", b)):
        feats = np.load(out / "1" / "2" / f"{rel}.npy")
        frames = int(model.feature_encoder.output_lengths(torch.tensor([len(wav)])))
        assert feats.shape == (frames, model.cfg.context_network.embed_dim)
        with torch.no_grad():
            ref = hf.wav2vec2(torch.from_numpy(wav[:, 0])[None]).last_hidden_state[0].numpy()
        np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)

    # --layer N: the output of block N (transformers' model cut to N blocks)
    proc = run(
        "w2v2_pretrain.cli.extract",
        str(tmp / "model.pt"),
        str(root / "1" / "2" / "1-2-0000.flac"),
        str(tmp_path / "l2"),
        "--layer",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    hf.wav2vec2.encoder.layers = hf.wav2vec2.encoder.layers[:2]
    with torch.no_grad():
        ref = hf.wav2vec2(torch.from_numpy(a[:, 0])[None]).last_hidden_state[0].numpy()
    np.testing.assert_allclose(
        np.load(tmp_path / "l2" / "1-2-0000.npy"), ref, rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize(
    "make, args, message",
    [
        (lambda p: p.write_bytes(b"junk"), [], "bad.flac: unreadable audio"),
        (lambda p: write_tone(p, 0.01), [], "shorter than the feature encoder's receptive field"),
        (lambda p: write_tone(p, 1.0), ["--layer", "9"], "--layer 9: the model has layers 1..4"),
    ],
)
def test_extract_bad_input_is_one_line(exported, tmp_path, make, args, message):
    _, tmp = exported
    make(tmp_path / "bad.flac")
    proc = run(
        "w2v2_pretrain.cli.extract",
        str(tmp / "model.pt"),
        str(tmp_path / "bad.flac"),
        str(tmp_path / "out"),
        *args,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out" / "bad.npy").exists()


def test_export_missing_model_is_one_line(tmp_path):
    proc = run("w2v2_pretrain.cli.export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.ckpt'}: model file not found"


def test_input_contract_travels_with_the_model(tmp_path):
    """A model trained on normalized input records it: w2v2-extract normalizes by default,
    w2v2-export writes a preprocessor_config.json that transformers' AutoFeatureExtractor
    loads with do_normalize, and feature extractor + model there equal our extraction."""
    from transformers import AutoFeatureExtractor

    torch.manual_seed(0)
    cfg = preset("tiny")
    cfg.input.normalize = True
    model = Wav2Vec2Model(cfg).eval()
    save_model(model, tmp_path / "model.pt")
    assert load_model(tmp_path / "model.pt").cfg.input.normalize
    proc = run("w2v2_pretrain.cli.export", str(tmp_path / "model.pt"), str(tmp_path / "hf"))
    assert proc.returncode == 0, proc.stderr
    fe = AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert fe.do_normalize is True and fe.sampling_rate == 16_000
    assert fe.return_attention_mask is False  # group-norm encoder: never padded
    assert load_model(tmp_path / "hf").cfg.input.normalize  # and back

    wav = write_tone(tmp_path / "a.wav", 1.5)[:, 0] * 2.0
    sf.write(tmp_path / "a.wav", wav, 16_000, subtype="FLOAT")
    proc = run(
        "w2v2_pretrain.cli.extract",
        str(tmp_path / "hf"),
        str(tmp_path / "a.wav"),
        str(tmp_path / "feats"),
    )
    assert proc.returncode == 0, proc.stderr
    assert "normalized: True" in proc.stdout
    ours = np.load(tmp_path / "feats" / "a.npy")
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    inputs = fe(wav, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        theirs = hf.wav2vec2(inputs.input_values).last_hidden_state[0].numpy()
    # the two normalisations differ only in epsilon (fairseq's 1e-5, transformers' 1e-7)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    raw = run(
        "w2v2_pretrain.cli.extract",
        str(tmp_path / "hf"),
        str(tmp_path / "a.wav"),
        str(tmp_path / "raw"),
        "--no-normalize",
    )
    assert raw.returncode == 0 and "normalized: False" in raw.stdout
    assert not np.allclose(np.load(tmp_path / "raw" / "a.npy"), ours, atol=1e-3)
