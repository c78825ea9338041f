"""``w2v2-export`` and ``w2v2-extract`` through their real command lines."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import write_tone

transformers = pytest.importorskip("transformers")

from w2v2_pretrain.model_files import save_model  # noqa: E402
from w2v2_pretrain.model_sources import load_model  # noqa: E402
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


def test_extract_manifest_equals_transformers(exported, tmp_path, capsys):
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
    code, err, _ = extract_main(capsys, str(tmp / "hf"), str(tmp_path / "test.tsv"), str(out))
    assert code == 0, err
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp / "hf").eval()
    for rel, wav in (("1-2-0000", a), ("1-2-0001", b)):
        feats = np.load(out / "1" / "2" / f"{rel}.npy")
        frames = int(model.feature_encoder.output_lengths(torch.tensor([len(wav)])))
        assert feats.shape == (frames, model.cfg.context_network.embed_dim)
        with torch.no_grad():
            ref = hf.wav2vec2(torch.from_numpy(wav[:, 0])[None]).last_hidden_state[0].numpy()
        np.testing.assert_allclose(feats, ref, rtol=1e-4, atol=1e-5)

    # --layer N: the output of block N (transformers' model cut to N blocks)
    one = str(root / "1" / "2" / "1-2-0000.flac")
    code, err, _ = extract_main(
        capsys, str(tmp / "model.pt"), one, str(tmp_path / "l2"), "--layer", "2"
    )
    assert code == 0, err
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
def test_extract_bad_input_is_one_line(exported, tmp_path, capsys, make, args, message):
    _, tmp = exported
    make(tmp_path / "bad.flac")
    code, lines, _ = extract_main(
        capsys, str(tmp / "model.pt"), str(tmp_path / "bad.flac"), str(tmp_path / "out"), *args
    )
    assert code == 2
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0]
    assert not (tmp_path / "out" / "bad.npy").exists()


def test_export_missing_model_is_one_line(tmp_path):
    proc = run("w2v2_pretrain.cli.export", str(tmp_path / "nope.ckpt"), str(tmp_path / "o"))
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"error: {tmp_path / 'nope.ckpt'}: model file not found"


def test_input_contract_travels_with_the_model(tmp_path, capsys):
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
    from w2v2_pretrain.cli.export import main as export

    export([str(tmp_path / "model.pt"), str(tmp_path / "hf")])  # w2v2-export in this process
    fe = AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    assert fe.do_normalize is True and fe.sampling_rate == 16_000
    assert fe.return_attention_mask is False  # group-norm encoder: never padded
    assert load_model(tmp_path / "hf").cfg.input.normalize  # and back

    wav = write_tone(tmp_path / "a.wav", 1.5)[:, 0] * 2.0
    sf.write(tmp_path / "a.wav", wav, 16_000, subtype="FLOAT")
    code, err, out = extract_main(
        capsys, str(tmp_path / "hf"), str(tmp_path / "a.wav"), str(tmp_path / "feats")
    )
    assert code == 0, err
    assert "normalized: True" in out
    ours = np.load(tmp_path / "feats" / "a.npy")
    hf = transformers.Wav2Vec2ForPreTraining.from_pretrained(tmp_path / "hf").eval()
    inputs = fe(wav, sampling_rate=16_000, return_tensors="pt")
    with torch.no_grad():
        theirs = hf.wav2vec2(inputs.input_values).last_hidden_state[0].numpy()
    # the two normalisations differ only in epsilon (fairseq's 1e-5, transformers' 1e-7)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-4)
    code, _, out = extract_main(
        capsys,
        str(tmp_path / "hf"),
        str(tmp_path / "a.wav"),
        str(tmp_path / "raw"),
        "--no-normalize",
    )
    assert code == 0 and "normalized: False" in out
    assert not np.allclose(np.load(tmp_path / "raw" / "a.npy"), ours, atol=1e-3)


def extract_main(capsys, *args: str) -> tuple[int, list[str], str]:
    """``w2v2-extract`` in this process: (exit status, stderr lines, stdout)."""
    from w2v2_pretrain.cli.extract import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.err.splitlines(), out.out


def test_extract_writes_only_under_out_dir_and_refuses_a_shared_name(exported, tmp_path, capsys):
    """A manifest line with an absolute path (inside the root) is written at its place under
    OUT_DIR, not next to the audio; ``a.flac`` and ``a.wav`` would share ``a.npy``: refused
    before anything is extracted, naming both lines."""
    _, tmp = exported
    root = tmp_path / "audio"
    n = len(write_tone(root / "1" / "2" / "a.flac", 0.5))
    write_tone(root / "1" / "2" / "a.wav", 0.5)
    write_tone(root / "1" / "b.flac", 0.5)
    (tmp_path / "abs.tsv").write_text(f"{root}\n{root}/1/2/a.flac\t{n}\n1/b.flac\t{n}\n")
    code, err, out = extract_main(
        capsys, str(tmp / "model.pt"), str(tmp_path / "abs.tsv"), str(tmp_path / "f")
    )
    assert code == 0, err
    assert out.startswith(f"wrote 2 files of dim 256 to {tmp_path / 'f'} ")
    assert sorted(p.relative_to(tmp_path / "f") for p in (tmp_path / "f").rglob("*.npy")) == [
        Path("1/2/a.npy"),
        Path("1/b.npy"),
    ]
    assert not list(root.rglob("*.npy"))

    (tmp_path / "both.tsv").write_text(f"{root}\n1/2/a.flac\t{n}\n1/2/a.wav\t{n}\n")
    code, err, _ = extract_main(
        capsys, str(tmp / "model.pt"), str(tmp_path / "both.tsv"), str(tmp_path / "g")
    )
    assert code == 2
    assert err == [
        f"error: {tmp_path / 'both.tsv'}:3 ({root}/1/2/a.wav): would write 1/2/a.npy, as "
        f"{tmp_path / 'both.tsv'}:2 ({root}/1/2/a.flac) does (the output keeps the path without "
        "its extension): list only one of them"
    ]
    assert not list((tmp_path / "g").rglob("*.npy"))


def test_long_file_is_extracted_in_windows(exported, tmp_path, capsys, monkeypatch):
    """With --window-seconds a file is read one window at a time (never whole) and each window's
    middle frames are the model's output for that window's samples; the frame count is the
    whole file's; a window that covers the file gives exactly the whole-file extraction."""
    from w2v2_pretrain.data.audio import normalize
    from w2v2_pretrain.extract import windows

    model, tmp = exported
    write_tone(tmp_path / "long.wav", 2.0)
    wav = sf.read(tmp_path / "long.wav", dtype="float32")[0]  # as the file holds it (16 bit)
    whole = tmp_path / "whole"
    assert (
        extract_main(capsys, str(tmp / "model.pt"), str(tmp_path / "long.wav"), str(whole))[0] == 0
    )
    reads = []
    real_read = sf.SoundFile.read

    def read(self, frames=-1, *args, **kwargs):
        reads.append(frames)
        return real_read(self, frames, *args, **kwargs)

    monkeypatch.setattr(sf.SoundFile, "read", read)
    for name, extra in (("win", []), ("norm", ["--normalize"]), ("cover", [])):
        seconds = "2" if name == "cover" else "0.5"
        code, err, _ = extract_main(
            capsys,
            str(tmp / "model.pt"),
            str(tmp_path / "long.wav"),
            str(tmp_path / name),
            "--window-seconds",
            seconds,
            "--window-overlap",
            "0.125",
            *extra,
        )
        assert code == 0, err
        if name == "win":
            assert len(reads) == 4 and max(reads) == (25 + 2 * 6 - 1) * 320 + 400
    full = np.load(whole / "long.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "cover" / "long.npy"), full)
    spans = windows(len(full), 25, 6, 320, 400)
    assert [(w.keep_start, w.keep_end) for w in spans] == [(0, 25), (25, 50), (50, 75), (75, 99)]
    for name, audio in (("win", wav), ("norm", normalize(wav))):
        got = np.load(tmp_path / name / "long.npy")
        assert got.shape == full.shape
        for w in spans:
            with torch.no_grad():
                ref = model.extract(torch.from_numpy(audio[w.start : w.end])[None]).hidden[0]
            keep = slice(w.keep_start - w.first_frame, w.keep_end - w.first_frame)
            np.testing.assert_allclose(
                got[w.keep_start : w.keep_end], ref[keep].numpy(), atol=1e-4
            )
    # what windowing changes: the context network saw only each window
    assert not np.allclose(np.load(tmp_path / "win" / "long.npy"), full, atol=1e-3)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--max-seconds", "5"], "long.wav: 7.3 s long, over --max-seconds 5: --window-seconds S"),
        (["--device", "cuda:{gpus}"], "--device cuda:{gpus}: "),
        (["--device", "gpu"], "--device gpu: not a device (cpu, cuda, cuda:N)"),
        (["OUT=file"], "OUT_DIR {tmp}/file: is a file, not a folder"),
        (["OUT=file/sub"], "OUT_DIR {tmp}/file/sub: cannot write there: {tmp}/file is a file"),
        (["OUT=/sys/w2v2-feats"], "OUT_DIR /sys/w2v2-feats: cannot write there: Operation not"),
    ],
)
def test_extract_settings_and_out_dir_are_one_line(exported, tmp_path, capsys, args, message):
    """Too long without windows, a GPU that is not there (cuda:N, N the GPU count), OUT_DIR
    that is a file, under a file, or not writable (/sys: tests run as root, whom chmod does
    not stop; the kernel refuses even root there)."""
    _, tmp = exported
    write_tone(tmp_path / "long.wav", 7.3)
    (tmp_path / "file").write_text("x")
    out = str(tmp_path / "out")
    if args[0].startswith("OUT="):
        out, args = args[0][4:] if args[0][4] == "/" else str(tmp_path / args[0][4:]), []
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    args = [a.format(gpus=gpus) for a in args]
    code, err, _ = extract_main(
        capsys, str(tmp / "model.pt"), str(tmp_path / "long.wav"), out, *args
    )
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: ")
    assert message.format(tmp=tmp_path, gpus=gpus) in err[0]


def export_main(capsys, *args: str) -> tuple[int, list[str]]:
    """``w2v2-export`` in this process: (exit status, stderr lines)."""
    from w2v2_pretrain.cli.export import main

    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err.splitlines()


def test_export_onto_an_existing_out_needs_overwrite(exported, tmp_path, capsys):
    """An existing OUT is refused unless --overwrite; --overwrite replaces a model folder as a
    whole (no stale file left) or a fairseq file; a folder that is not a model, a file where a
    folder goes, a folder where a file goes, or OUT under a file: one line, nothing touched."""
    _, tmp = exported
    model = str(tmp / "model.pt")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text("{}")
    (hf / "pytorch_model.bin").write_text("stale")
    assert export_main(capsys, model, str(hf)) == (
        2,
        [f"error: OUT {hf}: exists; --overwrite replaces it"],
    )
    assert export_main(capsys, model, str(hf), "--overwrite")[0] == 0
    assert sorted(p.name for p in hf.iterdir()) == [
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert load_model(hf).cfg.context_network.num_layers == 4
    capsys.readouterr()  # transformers' loading bar

    fs = tmp_path / "model_fs.pt"
    fs.write_text("old")
    assert export_main(capsys, model, str(fs), "--format", "fairseq") == (
        2,
        [f"error: OUT {fs}: exists; --overwrite replaces it"],
    )
    assert export_main(capsys, model, str(fs), "--format", "fairseq", "--overwrite")[0] == 0
    assert fs.stat().st_size > 1000

    home = tmp_path / "home"
    (home / "notes").mkdir(parents=True)
    for out, fmt, message in (
        (
            home,
            "transformers",
            "a folder that is not a transformers model (no config.json); not replaced, even "
            "with --overwrite: choose another OUT",
        ),
        (fs, "transformers", "is a file; the transformers export writes a folder"),
        (hf, "fairseq", "is a folder; the fairseq export writes one file"),
        (fs / "sub", "transformers", f"its folder {fs}: is a file, not a folder"),
    ):
        code, err = export_main(capsys, model, str(out), "--format", fmt, "--overwrite")
        assert (code, err) == (2, [f"error: OUT {out}: {message}"])
    assert (home / "notes").is_dir()
