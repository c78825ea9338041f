"""Representation probes: metrics on constructed features with known answers, determinism,
probe sets from manifest folders, the training callback through a real run, and ``w2v2-probe``
on every model form."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torchaudio.functional import edit_distance

from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.probes import characters, label_free
from w2v2_pretrain.probes.config import ProbeConfig
from w2v2_pretrain.probes.linear import LinearBudget
from w2v2_pretrain.probes.probe_set import build_probe_set, load_probe_audio, normalize_transcript
from w2v2_pretrain.probes.run import run_probes
from w2v2_pretrain.probes.speakers import speaker_probe

REPO = Path(__file__).resolve().parents[1]
DEMO_MANIFESTS = REPO / "data" / "manifests"
WORDS = ["THE", "CAT", "SAT", "ON", "A", "MAT", "BIG", "DOG", "RAN", "HOME", "TO", "SEE", "IT"]


def _sentences(n: int, seed: int) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    return [
        " ".join(WORDS[int(i)] for i in torch.randint(len(WORDS), (int(k),), generator=g))
        for k in torch.randint(3, 7, (n,), generator=g)
    ]


def _char_frames(text: str, chars: str, noise: float, g: torch.Generator) -> torch.Tensor:
    """Frames that encode ``text`` perfectly: two frames of each character's one-hot, then
    a frame of the extra 'between' dimension (a blank a linear CTC layer can find)."""
    D = len(chars) + 1
    rows = []
    for c in text:
        one = torch.zeros(D)
        one[chars.index(c)] = 1.0
        gap = torch.zeros(D)
        gap[-1] = 1.0
        rows += [one, one, gap]
    x = torch.stack(rows)
    return x + noise * torch.randn(x.shape, generator=g)


def test_edit_distance_and_cer():
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance("", "abc") == 3 and edit_distance("abc", "") == 3
    assert characters.character_error_rate(["THE CAT"], ["THE CAT"]) == 0.0
    assert characters.character_error_rate(["", "AB"], ["AB", "AB"]) == 0.5
    with pytest.raises(ValueError):
        characters.character_error_rate([""], [""])


def test_ctc_probe_reads_perfect_features_and_not_noise():
    fit_texts, test_texts = _sentences(24, 0), _sentences(10, 1)
    budget = LinearBudget(steps=40)  # the probe config's
    chars = "".join(sorted({c for t in fit_texts + test_texts for c in t}))
    g = torch.Generator().manual_seed(0)
    fit = [_char_frames(t, chars, 0.05, g) for t in fit_texts]
    test = [_char_frames(t, chars, 0.05, g) for t in test_texts]
    good = characters.ctc_probe(fit, fit_texts, test, test_texts, budget)
    assert good.cer < 0.02, good.hypotheses[:2]
    noise_fit = [torch.randn(f.shape, generator=g) for f in fit]
    noise_test = [torch.randn(f.shape, generator=g) for f in test]
    bad = characters.ctc_probe(noise_fit, fit_texts, noise_test, test_texts, budget)
    assert bad.cer > 0.6
    again = characters.ctc_probe(fit, fit_texts, test, test_texts, budget)
    assert again == good  # deterministic


def test_speaker_probe_perfect_features_reach_1_and_noise_chance():
    g = torch.Generator().manual_seed(0)
    S, per = 8, 10
    speakers = [f"s{i}" for i in range(S) for _ in range(per)]
    centres = torch.randn(S, 32, generator=g) * 3
    x = torch.stack([centres[int(s[1:])] for s in speakers]) + 0.3 * torch.randn(
        len(speakers), 32, generator=g
    )
    fit = [i for i in range(len(speakers)) if i % per >= 3]
    test = [i for i in range(len(speakers)) if i % per < 3]
    spk = [speakers[i] for i in fit], [speakers[i] for i in test]
    good = speaker_probe(x[fit], spk[0], x[test], spk[1])
    assert good.accuracy == 1.0 and good.chance == pytest.approx(1 / S)
    noise = torch.randn(x.shape, generator=g)
    bad = speaker_probe(noise[fit], spk[0], noise[test], spk[1])
    assert bad.accuracy <= 0.35  # chance 0.125 on 24 held-out utterances


def test_rankme_and_cluster_quality_known_answers():
    g = torch.Generator().manual_seed(0)
    iso = torch.randn(5000, 16, generator=g)
    assert label_free.rankme(iso) > 15.0
    line = torch.randn(5000, 1, generator=g) * torch.randn(1, 16, generator=g)
    assert label_free.rankme(line) < 1.1
    centres = torch.randn(8, 16, generator=g) * 10
    blobs = centres.repeat_interleave(200, 0) + 0.2 * torch.randn(1600, 16, generator=g)
    tight = label_free.cluster_quality(blobs, 8, 1000, torch.Generator().manual_seed(0))
    loose = label_free.cluster_quality(iso, 8, 1000, torch.Generator().manual_seed(0))
    assert tight.silhouette > 0.8 and loose.silhouette < 0.3
    assert tight.perplexity == pytest.approx(8, rel=0.1)
    assert tight == label_free.cluster_quality(blobs, 8, 1000, torch.Generator().manual_seed(0))


def test_layer_features_equal_extract_at_every_layer():
    torch.manual_seed(0)
    for pre_ln in (False, True):
        cfg = preset("tiny")
        cfg.context_network.layer_norm_first = pre_ln
        model = Wav2Vec2Model(cfg).eval()
        audio = torch.randn(2, 8000)
        lengths = torch.tensor([8000, 6000])
        with torch.no_grad():
            feats = model.layer_features(audio, lengths)
            assert feats.hidden.shape[0] == cfg.context_network.num_layers + 1
            for i in range(1, cfg.context_network.num_layers + 1):
                ref = model.extract(audio, lengths, num_layers=i).hidden
                torch.testing.assert_close(feats.hidden[i], ref)


def test_probe_set_from_the_demo_manifests():
    ps = build_probe_set(DEMO_MANIFESTS, max_seconds=120, seed=0)
    assert ps == build_probe_set(DEMO_MANIFESTS, max_seconds=120, seed=0)  # fixed for a seed
    assert ps.skipped == {}
    assert 100 <= ps.seconds <= 125
    u = ps.utterances
    assert all(x.transcript and x.transcript == normalize_transcript(x.transcript) for x in u)
    assert all(x.speaker == x.path.parts[-3] for x in u)
    valid = sum(x.split == "valid" for x in u)
    assert valid == 13  # the whole validation split, then a slice of train
    held = [x for x in u if x.held_out]
    assert {x.speaker for x in held} == {x.speaker for x in u if not x.held_out}
    assert (
        normalize_transcript("Who told a curious child?  Don't.")
        == "WHO TOLD A CURIOUS CHILD DON'T"
    )


def _flat_folder(tmp_path: Path, n: int = 6) -> Path:
    """A manifest folder of demo audio copied flat: no speaker folders, no transcripts."""
    import shutil

    src = (DEMO_MANIFESTS / "train.tsv").read_text().splitlines()[1 : n + 1]
    audio = tmp_path / "flat"
    audio.mkdir()
    lines = [str(audio)]
    for row in src:
        rel, samples = row.split("\t")
        shutil.copy(REPO / "data" / "demo" / rel, audio / Path(rel).name)
        lines.append(f"{Path(rel).name}\t{samples}")
    out = tmp_path / "manifests_flat"
    out.mkdir()
    (out / "valid.tsv").write_text("\n".join(lines) + "\n")
    return out


def test_a_folder_without_labels_runs_the_label_free_probes(tmp_path, capsys):
    from w2v2_pretrain.cli.probe import main

    out = tmp_path / "records.json"
    main(["--manifest-dir", str(_flat_folder(tmp_path)), "--random-init", "tiny",
          "--layers", "0", "4", "--json", str(out)])  # fmt: skip
    printed = capsys.readouterr().out
    assert "skipped cer: needs transcripts" in printed
    assert "skipped speaker_acc: needs speakers" in printed
    records = json.loads(out.read_text())
    assert {r["probe"] for r in records} == {"rankme", "silhouette", "cluster_ppl"}
    assert {r["model"] for r in records} == {"random-init:tiny"}


def test_run_probes_is_deterministic_and_leaves_the_model_and_rng_alone():
    ps, audio = load_probe_audio(build_probe_set(DEMO_MANIFESTS, max_seconds=40, seed=1))
    torch.manual_seed(3)
    model = Wav2Vec2Model(preset("tiny")).train()
    config = ProbeConfig(layers=[4], ctc_steps=10, speaker_steps=20)
    state = torch.random.get_rng_state()
    a = run_probes(model, ps, audio, config, "m")
    assert torch.equal(state, torch.random.get_rng_state()) and model.training
    b = run_probes(model, ps, audio, config, "m")
    assert a.records == b.records
    assert {r.probe for r in a.records} == {
        "cer",
        "speaker_acc",
        "rankme",
        "silhouette",
        "cluster_ppl",
    }
    assert all(math.isfinite(r.value) for r in a.records)


@pytest.mark.slow
def test_cli_on_all_three_model_forms(tmp_path):
    pytest.importorskip("transformers")
    from w2v2_pretrain.cli.probe import main
    from w2v2_pretrain.interop.fairseq import export_fairseq
    from w2v2_pretrain.interop.hf import export
    from w2v2_pretrain.model_files import save_model

    torch.manual_seed(5)
    model = Wav2Vec2Model(preset("tiny")).eval()
    ours, hf, fs = tmp_path / "model.pt", tmp_path / "hf", tmp_path / "fairseq.pt"
    save_model(model, ours)
    export(model, hf)
    export_fairseq(model, fs)
    out = tmp_path / "records.json"
    main([str(ours), str(hf), str(fs), "--random-init", "tiny", "--manifest-dir",
          str(DEMO_MANIFESTS), "--max-seconds", "30", "--layers", "4",
          "--json", str(out)])  # fmt: skip
    records = json.loads(out.read_text())
    by = {}
    for r in records:
        assert set(r) == {"model", "layer", "probe", "value"}
        by.setdefault(r["model"], {})[(r["layer"], r["probe"])] = r["value"]
    assert set(by) == {str(ours), str(hf), str(fs), "random-init:tiny"}
    for other in (str(hf), str(fs)):  # the same weights read back give the same numbers
        for key, value in by[str(ours)].items():
            assert by[other][key] == pytest.approx(value, rel=1e-3, abs=1e-3), (other, key)
    assert by["random-init:tiny"] != by[str(ours)]


def test_cli_errors_are_one_line(tmp_path, capsys):
    from w2v2_pretrain.cli.probe import main

    with pytest.raises(SystemExit) as e:
        main(["--random-init", "tiny", "--manifest-dir", str(tmp_path / "nowhere")])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: ") and "manifest folder not found" in err and err.count("\n") == 1
    )
    with pytest.raises(SystemExit):
        main(["--random-init", "tiny", "--manifest-dir", str(DEMO_MANIFESTS), "--layers", "9"])
    assert "layer 9 does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_probe_callback_cadence_and_tensorboard_tags(tmp_path):
    from helpers import FAST, compose_cfg, scalars, small_manifests

    from w2v2_pretrain.train import build
    from w2v2_pretrain.training.probe_callback import ProbeCallback, probe_summary_lines

    manifests = small_manifests(tmp_path, 16)
    overrides = [
        *FAST,
        f"data.manifest_dir={manifests}",
        "trainer.max_steps=4",
        "trainer.val_check_interval=4",
        "probe.every_n_updates=2",
        f"probe.manifest_dir={DEMO_MANIFESTS}",
        "probe.max_seconds=45",
        "probe.layers=[0,4]",
        "probe.ctc_steps=5",
        "probe.speaker_steps=10",
    ]
    datamodule, module, trainer = build(compose_cfg(overrides, tmp_path / "run"))
    trainer.fit(module, datamodule=datamodule)
    assert trainer.global_step == 4
    logged = scalars(tmp_path / "run")
    for layer in (0, 4):
        for probe in ("cer", "speaker_acc", "rankme"):
            steps = [s for s, _ in logged[f"probe/{probe}_layer{layer}"]]
            assert steps == [0, 2, 4], (probe, layer, steps)
    assert "probe/layers" in logged["__images__"]
    assert [s for s, _ in logged["probe/seconds"]] == [0, 2, 4]
    callback = next(c for c in trainer.callbacks if isinstance(c, ProbeCallback))
    assert [step for step, _ in callback.reports] == [0, 2, 4]
    lines = probe_summary_lines(trainer.callbacks)
    assert lines[0].startswith("update 4: cer ") and any("best cer" in x for x in lines)


def test_probes_are_off_by_default(tmp_path):
    """Off unless set (the demo sets them); an unknown probe setting or a negative cadence is
    refused as every bad setting is: one line naming the field, before the run starts."""
    from helpers import FAST, compose_cfg, error_line

    cfg = compose_cfg([*FAST[1:], f"data.manifest_dir={DEMO_MANIFESTS}"], tmp_path)
    assert cfg.probe.every_n_updates == 0
    assert compose_cfg(["experiment=demo"], tmp_path).probe.every_n_updates == 200  # the demo's
    line = error_line([*FAST, "probe.ctc_stepz=3"], tmp_path / "a")
    assert line == "error: probe.ctc_stepz: no such setting; did you mean probe.ctc_steps?"
    line = error_line([*FAST, "probe.every_n_updates=-1"], tmp_path / "b")
    assert line.startswith("error: probe.every_n_updates=-1: expected an integer >= 0")


def test_a_file_that_cannot_be_read_is_skipped_from_the_probe_set(tmp_path, caplog):
    """A corpus with bad files (the run skips them at set-up): the probe set leaves each one
    out, named in a warning, and probes the rest."""
    from helpers import messy_corpus

    ps = build_probe_set(messy_corpus(tmp_path), max_seconds=60)
    with caplog.at_level("WARNING", logger="w2v2_pretrain.probes.probe_set"):
        readable, audio = load_probe_audio(ps)
    skipped = [r.getMessage() for r in caplog.records if "probe set: skipped" in r.getMessage()]
    assert len(readable.utterances) == len(audio) == len(ps.utterances) - len(skipped)
    assert any("text.flac" in line and "unreadable audio" in line for line in skipped)
    assert any("missing.flac" in line for line in skipped)
    assert all(np.isfinite(a).all() and len(a) for a in audio)
