"""Dataset, audio decoding, collate, bucketing sampler and data module on real files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from helpers import (
    FAST,
    compose_cfg,
    error_line,
    padding_mask,
    paths,
    sampler_batches,
    write_tone,
)

from w2v2_pretrain.data.audio import read_audio
from w2v2_pretrain.data.collate import Collator, MaskPlanner
from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.data.datamodule import AudioDataModule
from w2v2_pretrain.data.dataset import AudioDataset, BadFile, crop_start
from w2v2_pretrain.data.index import read_manifest
from w2v2_pretrain.data.manifest import build_manifests
from w2v2_pretrain.data.sampler import BucketBatchSampler, corpus_shares
from w2v2_pretrain.data.verify import check_manifest
from w2v2_pretrain.errors import ConfigError, DataError, one_line
from w2v2_pretrain.models.feature_encoder import frame_lengths


def manifest_of(tmp_path, files: dict[str, float], **kw):
    """Write files {relpath: seconds} and a manifest of them; return the parsed manifest."""
    root = tmp_path / "audio"
    lines = [str(root)]
    for i, (rel, seconds) in enumerate(files.items()):
        data = write_tone(root / rel, seconds, seed=i, **kw)
        lines.append(f"{rel}\t{len(data)}")
    path = tmp_path / "train.tsv"
    path.write_text("\n".join(lines) + "\n")
    return read_manifest(path)


# --- audio decoding --------------------------------------------------------------------------


def test_resample_and_refuse(tmp_path):
    write_tone(tmp_path / "a.wav", 1.5, rate=22_050)
    wav = read_audio(tmp_path / "a.wav", 16_000)
    assert wav.dtype == np.float32 and wav.shape == (24_000,)
    with pytest.raises(DataError, match=r"a.wav: sample rate 22050 Hz, expected 16000 Hz"):
        read_audio(tmp_path / "a.wav", 16_000, resample=False)


def test_downmix_and_refuse(tmp_path):
    data = write_tone(tmp_path / "s.flac", 1.0, channels=2)
    wav = read_audio(tmp_path / "s.flac")
    written = sf.read(tmp_path / "s.flac", dtype="float32")[0]
    np.testing.assert_allclose(wav, written.mean(axis=1), atol=1e-7)
    assert data.shape == (16_000, 2) and wav.shape == (16_000,)
    with pytest.raises(DataError, match=r"s.flac: 2 channels; set data.downmix=true"):
        read_audio(tmp_path / "s.flac", downmix=False)


def test_normalize(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 1.0})
    wav = AudioDataset(m, normalize=True)[0].wav
    assert abs(wav.mean()) < 1e-4 and abs(wav.std() - 1) < 1e-3


# --- crop and collate ------------------------------------------------------------------------


def test_crop_train_random_valid_deterministic(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 2.0})
    full = AudioDataset(m)[0].wav
    train = AudioDataset(m, max_sample_size=8000, train=True, seed=5)
    valid = AudioDataset(m, max_sample_size=8000, train=False)
    starts = set()
    for epoch in range(6):
        w = train[(0, epoch)].wav
        assert w.shape == (8000,)
        start = int(
            np.flatnonzero(np.isclose(full, w[0]) & np.isclose(np.roll(full, -1), w[1]))[0]
        )
        np.testing.assert_array_equal(full[start : start + 8000], w)
        starts.add(start)
        np.testing.assert_array_equal(w, train[(0, epoch)].wav)  # same (seed, epoch, index)
    assert len(starts) > 1
    np.testing.assert_array_equal(valid[(0, 3)].wav, full[:8000])


def test_collate_crop_and_pad_shapes(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 1.0, "1/1/b.flac": 0.5, "1/1/c.flac": 0.75})
    ds = AudioDataset(m)
    items = [ds[i] for i in range(3)]
    crop = Collator("crop")(items)
    assert crop.source.shape == (3, 8000)
    assert crop.lengths.tolist() == [8000] * 3 and not padding_mask(crop).any()
    assert crop.ids.tolist() == [0, 1, 2]
    pad = Collator("pad")(items)
    assert pad.source.shape == (3, 16_000)
    assert pad.lengths.tolist() == [16_000, 8000, 12_000]
    assert padding_mask(pad).sum(1).tolist() == [0, 8000, 4000]
    assert (pad.source[1, 8000:] == 0).all()
    np.testing.assert_array_equal(pad.source[2, :12_000].numpy(), items[2].wav)
    assert pad.padded and not crop.padded  # known on the host, without reading lengths back
    with pytest.raises(ConfigError, match="data.collate: expected one of 'crop', 'pad'"):
        Collator("trim")


def test_aligned_crops_start_on_frame_boundaries(tmp_path):
    """crop_alignment=320: every random crop starts at a multiple of the encoder's stride, so
    a stretch of audio maps to the same frames (and targets) whenever it is seen."""
    m = manifest_of(tmp_path, {"1/1/a.flac": 3.0, "1/1/b.flac": 2.1})
    full = AudioDataset(m)[0].wav
    ds = AudioDataset(m, max_sample_size=16_000, seed=3, crop_alignment=320)
    starts = set()
    for epoch in range(20):
        w = ds[(0, epoch)].wav
        start = int(
            np.flatnonzero(np.isclose(full, w[0]) & np.isclose(np.roll(full, -1), w[1]))[0]
        )
        assert start % 320 == 0
        starts.add(start)
        batch = Collator("crop", crop_alignment=320)([ds[(0, epoch)], ds[(1, epoch)]])
        assert batch.source.shape[1] == 16_000
    assert len(starts) > 5


def test_collator_plans_masks_per_utterance(tmp_path):
    """The planner draws each utterance's masks from (seed, epoch, utterance): the same in any
    batch, new each epoch, and valid (equal counts, never on padding)."""
    from w2v2_pretrain.models import preset

    m = manifest_of(tmp_path, {"a.flac": 2.0, "b.flac": 2.0, "c.flac": 1.5})
    ds = AudioDataset(m)
    planner = MaskPlanner(preset("tiny"), seed=4)
    collate = Collator("pad", planner=planner)
    ab = collate([ds[(0, 0)], ds[(1, 0)]])
    ba = collate([ds[(1, 0)], ds[(0, 0)]])
    assert torch.equal(ab.plan.mask, ba.plan.mask[[1, 0]])
    assert not torch.equal(ab.plan.mask, collate([ds[(0, 1)], ds[(1, 1)]]).plan.mask)
    padded = collate([ds[(0, 0)], ds[(2, 0)]])
    frames = padded.plan.mask.shape[1]
    short = int(frame_lengths(torch.tensor([24_000]), preset("tiny").feature_encoder.conv_layers))
    assert not padded.plan.mask[1, short:].any() and frames > short
    M = padded.plan.num_masked
    assert padded.plan.mask.sum(1).tolist() == [M, M]
    assert (padded.plan.mask.gather(1, padded.plan.indices)).all()
    assert padded.plan.distractors.shape == (2, M, preset("tiny").objective.num_negatives)


# --- bucketing sampler -----------------------------------------------------------------------


def test_budget_respected_and_padding_small():
    rng = np.random.default_rng(0)
    sizes = rng.integers(32_000, 250_000, size=2000)
    s = BucketBatchSampler(sizes, max_tokens=1_400_000, seed=1)
    batches = [[i for i, _ in b] for b in sampler_batches(s, 0)]
    assert sorted(i for b in batches for i in b) == list(range(2000))
    padded = real = 0
    for b in batches:
        assert len(b) * sizes[b].max() <= 1_400_000
        padded += len(b) * sizes[b].max()
        real += sizes[b].sum()
    assert 1 - real / padded < 0.02  # padding fraction
    # reshuffled each epoch from the seed, reproducible
    assert sampler_batches(s, 0) != sampler_batches(s, 1)
    again = BucketBatchSampler(sizes, 1_400_000, seed=1)
    assert sampler_batches(again, 1) == sampler_batches(s, 1)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_disjoint_complete_equal(world):
    sizes = np.random.default_rng(1).integers(16_000, 64_000, size=101)
    shards = []
    for rank in range(world):
        s = BucketBatchSampler(sizes, 200_000, seed=3, num_replicas=world, rank=rank)
        s.set_epoch(2)
        shards.append([i for batch in s for i, epoch, _ in batch if epoch == 2])
        assert len(s) == len(list(s))
    lengths = {
        len(BucketBatchSampler(sizes, 200_000, seed=3, num_replicas=world, rank=r))
        for r in range(world)
    }
    assert len(lengths) == 1  # every rank the same number of batches
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(101))  # disjoint and complete


def test_resume_skips_consumed_batches():
    sizes = np.full(40, 16_000)
    s = BucketBatchSampler(sizes, 64_000, seed=0)
    full = list(s)
    s.resume(epoch=0, consumed=3)
    assert len(s) == len(full)  # Lightning counts the consumed batches as done
    assert list(s) == full[3:]
    assert list(s) == full  # the skip applies once
    s.resume(epoch=0, consumed=3)
    s.set_epoch(1)  # the interrupted epoch had ended: the next one is whole
    assert len(list(s)) == len(full)


def test_corpus_weights_set_each_corpus_share_of_batches():
    """Two corpora, 100 and 20 utterances, weighted 1:1: each gives half of every epoch's
    batches (the small one upsampled, its copies numbered), the batch count stays fixed, and
    batches never mix corpora."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(16_000, 48_000, size=120)
    corpora = np.array([0] * 100 + [1] * 20)
    s = BucketBatchSampler(sizes, 96_000, seed=4, corpora=corpora, weights=[1.0, 1.0])
    counts = set()
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        counts.add(len(batches))
        from_small = [b for b in batches if corpora[b[0][0]] == 1]
        assert abs(len(from_small) - len(batches) / 2) <= 1
        assert all(len({corpora[i] for i, _, _ in b}) == 1 for b in batches)
        small = [(i, c) for b in from_small for i, _, c in b]
        assert len(set(small)) == len(small) and max(c for _, c in small) >= 1  # copies
        assert all(len(b) * max(sizes[i] for i, _, _ in b) <= 96_000 for b in batches)
    assert len(counts) == 1 and len(s) == counts.pop()
    # without weights: one epoch uses each utterance exactly once
    plain = BucketBatchSampler(sizes, 96_000, seed=4, corpora=corpora)
    assert sorted(i for b in plain for i, _, _ in b) == list(range(120))


def test_corpus_shares_natural_weights_and_temperature():
    """Hours 100, 10 and 1 h: naturally 100/111, 10/111, 1/111; with XLS-R's alpha 0.5 each
    share is proportional to sqrt(hours / 111), i.e. 10 : sqrt(10) : 1 (0.706, 0.223, 0.071);
    alpha 1 is the natural share; explicit weights are normalised."""
    hours = np.array([100.0, 10.0, 1.0])
    natural = corpus_shares(hours)
    np.testing.assert_allclose(natural, [100 / 111, 10 / 111, 1 / 111])
    by_hand = np.array([10.0, np.sqrt(10.0), 1.0]) / (11.0 + np.sqrt(10.0))
    tempered = corpus_shares(hours, alpha=0.5)
    np.testing.assert_allclose(tempered, by_hand)
    np.testing.assert_allclose(tempered, [0.70610, 0.22329, 0.07061], atol=1e-5)
    np.testing.assert_allclose(corpus_shares(hours, alpha=1.0), natural)
    flatter = corpus_shares(hours, alpha=0.1)
    assert flatter[2] > tempered[2] > natural[2] and flatter[0] < tempered[0] < natural[0]
    np.testing.assert_allclose(corpus_shares(hours, weights=[3, 1, 4]), [3 / 8, 1 / 8, 4 / 8])
    with pytest.raises(ValueError, match="alpha must be in"):
        corpus_shares(hours, alpha=0.0)
    with pytest.raises(ValueError, match="not both"):
        corpus_shares(hours, weights=[1, 1, 1], alpha=0.5)


def test_temperature_shares_are_realised_in_every_epoch():
    """Three corpora of 3000, 300 and 30 clips (about 3, 0.3 and 0.03 h) sampled with alpha
    0.5: each epoch's batches come from each corpus in its computed share (to one batch), its
    audio to within a point; on two ranks the batches are the same, dealt disjointly, and a
    resume continues exactly."""
    rng = np.random.default_rng(0)
    counts = [3000, 300, 30]
    sizes = rng.integers(16_000, 96_000, size=sum(counts))
    corpora = np.repeat(np.arange(3), counts)
    hours = np.bincount(corpora, sizes) / 16_000 / 3600
    shares = corpus_shares(hours, alpha=0.5)
    assert shares[2] > 2 * counts[2] / sum(counts)  # the small corpus is upsampled

    def sampler(rank: int = 0, world: int = 1) -> BucketBatchSampler:
        return BucketBatchSampler(
            sizes, 200_000, seed=5, corpora=corpora, weights=shares, num_replicas=world, rank=rank
        )

    one, ranks = sampler(), [sampler(r, 2) for r in range(2)]
    for epoch in range(3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        batches = list(one)
        of = np.array([corpora[b[0][0]] for b in batches])
        assert all(len({corpora[i] for i, _, _ in b}) == 1 for b in batches)
        realised = np.bincount(of, minlength=3) / len(batches)
        np.testing.assert_allclose(realised, shares, atol=1 / len(batches))
        audio = np.bincount(of, [sum(sizes[i] for i, _, _ in b) for b in batches], 3)
        np.testing.assert_allclose(audio / audio.sum(), shares, atol=0.01)
        dealt = [list(s) for s in ranks]
        assert len(dealt[0]) == len(dealt[1])
        assert sorted(map(str, dealt[0] + dealt[1])) == sorted(map(str, batches))
        keys = [{(i, c) for b in d for i, _, c in b} for d in dealt]
        assert not keys[0] & keys[1]  # no utterance copy on both ranks
    one.resume(epoch=2, consumed=7)
    assert list(one) == batches[7:]


def test_a_corpus_left_empty_gives_its_share_to_the_others():
    """Weights for two corpora when the checks left the second empty: the first fills the
    epoch, each utterance once."""
    s = BucketBatchSampler(
        np.full(8, 16_000), 32_000, corpora=np.zeros(8, dtype=np.int64), weights=[0.7, 0.3]
    )
    assert len(s) == 4 and sorted(i for b in s for i, _, c in b if c == 0) == list(range(8))


def _two_corpora(tmp_path: Path) -> list[Path]:
    """Two manifest folders of tones: 8 clips of 2 s (16 s) and 2 clips of 1 s (2 s)."""
    folders = []
    for name, n, seconds in (("big", 8, 2.0), ("small", 2, 1.0)):
        m = manifest_of(tmp_path / name, {f"{name}{i}.flac": seconds for i in range(n)})
        (m.source.parent / "valid.tsv").write_text(m.source.read_text())
        folders.append(m.source.parent)
    return folders


def test_temperature_from_the_command_line(tmp_path, caplog):
    """``data.corpus_weights=temperature data.sampling_alpha=0.5`` composed as the CLI does:
    the sampler gets shares proportional to sqrt(hours) of the manifests' audio (not the
    cropped), and the start-up table lists each corpus's hours and both shares."""
    import logging

    from w2v2_pretrain.training.config import run_config

    big, small = _two_corpora(tmp_path)
    corpora = [
        *FAST,
        f"data.manifest_dir=[{big},{small}]",
        "data.min_sample_size=8000",
        "data.max_sample_size=16000",  # crops the big corpus's clips to 1 s (cropped: 8 s, 2 s)
    ]
    temperature = ["data.corpus_weights=temperature"]
    overrides = [*corpora, *temperature, "data.sampling_alpha=0.5"]
    data = run_config(compose_cfg(overrides, tmp_path / "run")).data
    assert data.temperature_alpha == 0.5 and data.corpus_weight_list is None
    dm = AudioDataModule(data)
    with caplog.at_level(logging.INFO, logger="w2v2_pretrain.data.datamodule"):
        dm.setup("fit")
    by_hand = np.array([4.0, np.sqrt(2.0)]) / (4.0 + np.sqrt(2.0))  # sqrt(16) : sqrt(2)
    np.testing.assert_allclose(dm.train_shares, by_hand)  # (0.739, 0.261; cropped: 2/3, 1/3)
    assert dm.sampler("train").weights.tolist() == dm.train_shares.tolist()
    (table,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train:")]
    assert "sampled (temperature, alpha 0.5): share of each epoch's batches" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    for folder, want in ((big, ("8", "88.9%", "73.9%")), (small, ("2", "11.1%", "26.1%"))):
        utterances, _hours, _cropped, natural, sampled = rows[str(folder / "train.tsv")]
        assert (utterances, natural, sampled) == want  # natural: of the manifests' hours
    # without data.sampling_alpha: XLS-R's 0.5; alpha 1: the natural shares
    data = run_config(compose_cfg([*corpora, *temperature], tmp_path / "r")).data
    assert data.temperature_alpha == 0.5
    one = run_config(compose_cfg([*overrides, "data.sampling_alpha=1"], tmp_path / "r")).data
    dm = AudioDataModule(one)
    dm.setup("fit")
    np.testing.assert_allclose(dm.train_shares, [16 / 18, 2 / 18])
    # no weights: each utterance once, so each corpus gives its share of the cropped audio
    caplog.clear()
    dm = AudioDataModule(run_config(compose_cfg(corpora, tmp_path / "r")).data)
    with caplog.at_level(logging.INFO, logger="w2v2_pretrain.data.datamodule"):
        dm.setup("fit")
    assert dm.train_shares is None and dm.sampler("train").weights is None
    (table,) = [r.getMessage() for r in caplog.records if r.getMessage().startswith("train:")]
    assert "sampled: each utterance once per epoch (share of the cropped audio)" in table
    rows = {line.split()[0]: line.split()[-2:] for line in table.splitlines()[2:]}
    assert rows[str(big / "train.tsv")] == ["88.9%", "80.0%"]
    assert rows[str(small / "train.tsv")] == ["11.1%", "20.0%"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["data.corpus_weights=temperature", "data.sampling_alpha=0"],
            "error: data.sampling_alpha: must be in (0, 1] (XLS-R: 0.5; 1: natural "
            "proportions), got 0.0",
        ),
        (
            ["data.corpus_weights=temperature", "data.sampling_alpha=1.5"],
            "error: data.sampling_alpha: must be in (0, 1]",
        ),
        (
            ["data.sampling_alpha=0.5"],
            "error: data.sampling_alpha=0.5 is only used with data.corpus_weights=temperature",
        ),
        (
            ["data.corpus_weights=temprature"],
            "error: data.corpus_weights: expected a list of positive weights, one per manifest "
            "folder (1), or temperature, got 'temprature'",
        ),
        (
            ["data.corpus_weights=[1,2]"],
            "error: data.corpus_weights: one positive weight per manifest folder (1), got [1, 2]",
        ),
        (
            ["data.corpus_weights=[a]"],
            "error: data.corpus_weights: one positive weight per manifest folder (1), got ['a']",
        ),
    ],
)
def test_bad_corpus_sampling_is_one_line_error(tmp_path, overrides, message):
    line = error_line([*FAST, *overrides], tmp_path)
    assert line.startswith(message) and "\n" not in line, line


def test_utterance_larger_than_budget_is_config_error():
    with pytest.raises(DataError, match=r"data.max_tokens=1000 is smaller than one utterance"):
        BucketBatchSampler(np.array([5000]), 1000)


# --- bad files -------------------------------------------------------------------------------


def broken_corpus(tmp_path):
    """One good file and one of each kind of bad file, with a manifest naming them all."""
    root = tmp_path / "audio"
    good = write_tone(root / "good.flac", 1.0)
    write_tone(root / "trunc.flac", 2.0, seed=1)
    raw = (root / "trunc.flac").read_bytes()
    (root / "trunc.flac").write_bytes(raw[: len(raw) // 3])
    (root / "text.flac").write_text("hello, I am not audio\n")
    sf.write(root / "empty.wav", np.zeros(0, dtype=np.float32), 16_000)
    write_tone(root / "tiny.flac", 0.01)
    write_tone(root / "other.flac", 1.0)
    write_tone(root / "trunc.wav", 2.0, seed=2)
    raw = (root / "trunc.wav").read_bytes()
    (root / "trunc.wav").write_bytes(raw[: len(raw) // 2])
    rows = {
        "good.flac": len(good),
        "missing.flac": 16_000,
        "trunc.flac": 32_000,
        "text.flac": 16_000,
        "empty.wav": 16_000,
        "tiny.flac": 160,
        "other.flac": 12_345,
        "trunc.wav": 32_000,
    }
    path = tmp_path / "train.tsv"
    path.write_text(f"{root}\n" + "".join(f"{k}\t{v}\n" for k, v in rows.items()))
    return read_manifest(path)


@pytest.mark.parametrize(
    "name, line, cause",
    [
        ("missing.flac", 3, "file not found"),
        ("trunc.wav", 9, "manifest says 32000 samples but the file has"),
        ("text.flac", 5, "unreadable audio"),
        ("empty.wav", 6, "empty audio (0 samples)"),
        ("tiny.flac", 7, "shorter than the feature encoder's receptive field (400 samples)"),
        ("other.flac", 8, "manifest says 12345 samples but the file has 16000"),
    ],
)
def test_each_bad_file_is_named(tmp_path, name, line, cause):
    m = broken_corpus(tmp_path)
    keep = [0] + [i for i, p in enumerate(paths(m)) if p == name]
    with pytest.raises(DataError) as e:
        check_manifest(m.select(keep), 0, 400)
    msg = str(e.value)
    assert f"train.tsv:{line} (" in msg and name in msg and cause in msg and "\n" not in msg


def test_truncated_flac_is_caught_when_decoded(tmp_path):
    """A FLAC cut short keeps its header (the header pass cannot tell): verify=decode finds it
    at setup, and the dataset reports it as a bad file instead of raising in a worker."""
    m = broken_corpus(tmp_path)
    i = paths(m).index("trunc.flac")
    check_manifest(m.select([i]), 0, 400)  # the header pass cannot tell
    with pytest.raises(DataError, match=r"train.tsv:4 .*trunc.flac\): cannot be decoded"):
        check_manifest(m.select([i]), 0, 400, verify="decode")
    bad = AudioDataset(m)[i]
    assert isinstance(bad, BadFile) and "train.tsv:4" in bad.where
    assert bad.reason.startswith("unreadable audio")


def test_decode_check_finds_nan_and_silent_audio(tmp_path):
    root = tmp_path / "audio"
    write_tone(root / "good.flac", 1.0)
    sf.write(root / "nan.wav", np.full(16_000, np.nan, dtype=np.float32), 16_000, subtype="FLOAT")
    sf.write(root / "inf.wav", np.full(16_000, np.inf, dtype=np.float32), 16_000, subtype="FLOAT")
    sf.write(root / "zero.flac", np.zeros(16_000, dtype=np.float32), 16_000)
    (tmp_path / "train.tsv").write_text(
        f"{root}\n"
        + "".join(f"{n}\t16000\n" for n in ("good.flac", "nan.wav", "inf.wav", "zero.flac"))
    )
    m = read_manifest(tmp_path / "train.tsv")
    kept, skipped, bad_files = check_manifest(m, 0, 400, verify="header", on_bad_file="skip")
    assert len(kept) == 4 and not skipped  # headers are fine
    kept, skipped, bad_files = check_manifest(m, 0, 400, verify="decode", on_bad_file="skip")
    assert paths(kept) == ["good.flac"]
    assert skipped == {"non-finite": 2, "silent": 1}
    assert any("nan.wav): contains NaN or Inf samples" in s for s in bad_files)
    assert any("zero.flac): all-zero audio" in s for s in bad_files)
    # met in training instead (no decode check): skipped from the batch and named
    ds = AudioDataset(m)
    batch = Collator("pad")([ds[i] for i in range(4)])
    assert batch.ids.tolist() == [0] and len(batch.bad_files) == 3


def test_skip_policy_counts_each_reason(tmp_path):
    m = broken_corpus(tmp_path)
    kept, skipped, bad_files = check_manifest(m, 0, 400, on_bad_file="skip")
    # trunc.flac's header is intact: it passes the header pass and is skipped when decoded
    assert paths(kept) == ["good.flac", "trunc.flac"]
    assert skipped == {
        "missing": 1,
        "unreadable": 1,
        "empty": 1,
        "too short": 1,
        "wrong length": 2,
    }
    assert len(bad_files) == 6 and all("train.tsv:" in s for s in bad_files)
    ds = AudioDataset(kept)
    batch = Collator("pad")([ds[0], ds[1]])
    assert batch.ids.tolist() == [0] and batch.source.shape == (1, 16_000)
    assert len(batch.bad_files) == 1 and "trunc.flac): unreadable audio" in batch.bad_files[0]


def test_min_sample_size_skips_are_counted(tmp_path):
    m = manifest_of(tmp_path, {"a.flac": 1.0, "b.flac": 3.0, "c.flac": 0.5})
    kept, skipped, _ = check_manifest(m, 20_000, 400)
    assert paths(kept) == ["b.flac"]
    assert skipped == {"shorter than min_sample_size=20000": 2}


# --- data module -----------------------------------------------------------------------------


def test_datamodule_loads_manifest_folder(librispeech_tree, tmp_path):
    build_manifests(librispeech_tree, tmp_path / "m", valid_percent=0.3, seed=1, progress=False)
    dm = AudioDataModule(
        DataConfig(
            manifest_dir=str(tmp_path / "m"),
            min_sample_size=8000,
            max_sample_size=32_000,
            max_tokens=100_000,
            num_workers=2,
        ),
    )
    dm.setup("fit")
    seen = []
    for batch in dm.train_dataloader():
        assert batch.source.dtype == torch.float32
        assert batch.source.shape[0] * batch.source.shape[1] <= 100_000
        assert (batch.lengths == batch.source.shape[1]).all()
        seen += batch.ids.tolist()
    assert sorted(seen) == list(range(len(dm.datasets["train"])))
    # every utterance of the tree is in one split (none is under min_sample_size=8000)
    assert len(dm.datasets["train"]) + len(dm.datasets["valid"]) == 24
    assert dm.skipped["train"] == dm.skipped["valid"] == {}
    assert next(iter(dm.val_dataloader())).source.shape[1] <= 32_000


def test_file_broken_after_setup_is_reported_by_the_loader(tmp_path):
    """A file that breaks after the setup check reaches the step as a named bad file, from a
    real worker process, instead of killing the loader."""
    m = manifest_of(tmp_path, {"a.flac": 1.0, "b.flac": 1.0})
    (tmp_path / "valid.tsv").write_text((tmp_path / "train.tsv").read_text())
    dm = AudioDataModule(
        DataConfig(
            manifest_dir=str(tmp_path),
            min_sample_size=0,
            max_sample_size=16_000,
            max_tokens=64_000,
            num_workers=1,
        ),
    )
    dm.setup("fit")
    (m.root / "b.flac").write_bytes(b"garbage")
    batches = list(dm.train_dataloader())
    assert sum(len(b) for b in batches) == 1
    bad = [entry for b in batches for entry in b.bad_files]
    assert len(bad) == 1 and bad[0].startswith(f"{tmp_path / 'train.tsv'}:3 (")
    assert "unreadable audio" in bad[0] and "\n" not in bad[0]


def test_worker_error_is_one_line():
    """A project error re-raised by a DataLoader worker still prints as its own first line."""
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent "
        "call last):\n  File x\nw2v2_pretrain.errors.DataError: train.tsv:3 (b.flac): bad"
    )
    assert one_line(wrapped) == "train.tsv:3 (b.flac): bad"


def test_several_corpora_in_one_run(tmp_path):
    """Two manifest folders with their own roots and weights 3:1: the loader draws about three
    quarters of the batches from the first, names bad files by their own manifest, and states
    each corpus's share at start-up."""
    import logging

    a = manifest_of(tmp_path / "a", {f"a{i}.flac": 1.0 + 0.1 * i for i in range(12)})
    b = manifest_of(tmp_path / "b", {f"b{i}.flac": 1.0 + 0.1 * i for i in range(12)})
    for m in (a, b):
        (m.source.parent / "valid.tsv").write_text(m.source.read_text())
    (b.root / "b3.flac").unlink()  # a bad file of the second corpus
    dm = AudioDataModule(
        DataConfig(
            manifest_dir=[str(a.source.parent), str(b.source.parent)],
            min_sample_size=8000,
            max_sample_size=16_000,
            max_tokens=32_000,
            corpus_weights=[3, 1],
            num_workers=0,
        ),
    )
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("w2v2_pretrain.data.datamodule").addHandler(handler)
    logging.getLogger("w2v2_pretrain.data.datamodule").setLevel(logging.INFO)
    try:
        dm.setup("fit")
    finally:
        logging.getLogger("w2v2_pretrain.data.datamodule").removeHandler(handler)
    (table,) = [r.getMessage() for r in records if r.getMessage().startswith("train: ")]
    assert "train: 2 corpora; sampled (weights [3.0, 1.0]): share of each epoch's batches" in table
    rows = {line.split()[0]: line.split()[1:] for line in table.splitlines()[2:]}
    assert rows[str(a.source)][0] == "12" and rows[str(a.source)][-1] == "75.0%"
    assert rows[str(b.source)][0] == "11" and rows[str(b.source)][-1] == "25.0%"
    assert any(f"{b.source}:5 (" in x and "b3.flac" in x for x in dm.bad_files["train"])
    ds = dm.datasets["train"]
    corpora = ds.manifest.corpora()
    batches = list(dm.train_dataloader())
    first = sum(corpora[int(b.ids[0])] == 0 for b in batches)
    assert first == round(0.75 * len(batches))
    assert all(len({corpora[int(i)] for i in b.ids}) == 1 for b in batches)
    # each file is read from its own corpus's root
    assert ds.manifest.audio_path(len(ds) - 1).parent == b.root


@pytest.mark.parametrize(
    "rate, fmt", [(16_000, "flac"), (22_050, "flac"), (8_000, "wav"), (44_100, "flac")]
)
def test_windowed_read_equals_crop_of_full_decode(tmp_path, rate, fmt):
    """A random crop decodes only its window, and gets the samples the full decode (resampled
    if the file's rate is another) has there: at the start, the end and inside, stereo too.
    At the file's own rate bit for bit; resampled, to float32 rounding (the convolution runs
    over another length, so its sums are ordered differently)."""
    path = tmp_path / f"a.{fmt}"
    write_tone(path, 3.0, rate=rate, channels=2, seed=3)
    full = read_audio(path, 16_000)
    crop = 8_000
    atol = 0 if rate == 16_000 else 2e-6
    for start in (0, 1, 319, 12_345, len(full) - crop - 1, len(full) - crop):
        window = read_audio(path, 16_000, crop=crop, start_of=lambda _, s=start: s)
        assert window.shape == (crop,)
        np.testing.assert_allclose(window, full[start : start + crop], rtol=0, atol=atol)
    # through the dataset: the same crops as the full decode then cropped
    m = manifest_of(tmp_path / "m", {"x.flac": 3.0}, rate=rate)
    ds = AudioDataset(m, max_sample_size=crop, seed=5)
    whole = read_audio(m.audio_path(0), 16_000)
    for epoch in range(3):
        u = ds[(0, epoch)]
        start = crop_start(len(whole), crop, u.seed)
        np.testing.assert_allclose(u.wav, whole[start : start + crop], rtol=0, atol=atol)


def test_verify_record_is_reused_and_notices_replaced_or_truncated_files(tmp_path):
    """The first set-up's header scan is recorded beside the manifest; the next set-up reads
    it instead of scanning, and a file replaced or truncated since is checked again."""
    from w2v2_pretrain.data import record, scan

    m = manifest_of(tmp_path, {f"{i}.flac": 1.0 for i in range(4)})
    (tmp_path / "valid.tsv").write_text((tmp_path / "train.tsv").read_text())
    cfg = DataConfig(manifest_dir=str(tmp_path), min_sample_size=0, max_sample_size=16_000)
    checked = []
    real = scan.inspect_audio

    def counting(path, decode=False):
        checked.append(path)
        return real(path, decode=decode)

    scan.inspect_audio = counting
    try:
        AudioDataModule(cfg).setup("fit")
        assert len(checked) == 8 and record.record_path(m.source).is_file()
        checked.clear()
        AudioDataModule(cfg).setup("fit")  # a second start: no scan
        assert checked == []
        write_tone(m.root / "1.flac", 0.5, seed=9)  # replaced by a shorter file
        raw = (m.root / "2.flac").read_bytes()
        (m.root / "2.flac").write_bytes(raw[:20])  # truncated
        cfg.on_bad_file = "skip"
        dm = AudioDataModule(cfg)
        dm.setup("fit")
        assert sorted(Path(p).name for p in checked) == ["1.flac", "1.flac", "2.flac", "2.flac"]
        assert len(dm.datasets["train"]) == 2 and dm.skipped["train"] == {
            "wrong length": 1,
            "unreadable": 1,
        }
    finally:
        scan.inspect_audio = real


@pytest.mark.parametrize("fork_from", [10**9, 2])
def test_stat_files_agrees_with_os_stat_in_one_or_several_processes(
    tmp_path, monkeypatch, fork_from
):
    """Each entry's size, modification time and kind, also when the entries are split across
    forked processes (and when a child fails, its part is done by the parent)."""
    from w2v2_pretrain.data import scan

    monkeypatch.setattr(scan, "_FORK_FROM", fork_from)
    monkeypatch.setattr(scan, "_STAT_BLOCK", 4 if fork_from == 2 else 1 << 16)  # blocks too
    m = manifest_of(tmp_path, {f"d/{i}.flac": 0.1 * (1 + i % 3) for i in range(9)})
    (m.root / "d" / "3.flac").unlink()
    os.remove(m.root / "d" / "5.flac")
    (m.root / "d" / "5.flac").mkdir()
    found = scan.stat_files(m)
    for i in range(len(m)):
        path = m.audio_path(i)
        if not path.exists():
            assert (found.sizes[i], found.mtimes[i], found.kinds[i]) == (-1, 0, scan.MISSING)
            continue
        st = path.stat()
        kind = scan.REGULAR if path.is_file() else scan.OTHER
        assert (found.sizes[i], found.mtimes[i], found.kinds[i]) == (
            st.st_size,
            st.st_mtime_ns,
            kind,
        )
    part = scan.stat_files(m, np.array([8, 3, 0]))
    np.testing.assert_array_equal(part.sizes, found.sizes[[8, 3, 0]])
    real = scan._stat_rows
    parent = os.getpid()

    def failing_child(manifest, lo, hi, out):
        if os.getpid() != parent:
            raise OSError("child failed")
        real(manifest, lo, hi, out)

    monkeypatch.setattr(scan, "_stat_rows", failing_child)
    again = scan.stat_files(m)
    np.testing.assert_array_equal(again.mtimes, found.mtimes)
    np.testing.assert_array_equal(again.kinds, found.kinds)


def _ddp_setup(rank: int, world: int, folder: str, port: int, out: str) -> None:
    """One DDP rank: set the data up, and write how many files this rank checked."""
    import torch.distributed as dist

    from w2v2_pretrain.data import scan

    checked = []
    real = scan.inspect_audio
    scan.inspect_audio = lambda path, decode=False: checked.append(path) or real(path, decode)
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world
    )
    try:
        cfg = DataConfig(manifest_dir=folder, min_sample_size=0, max_sample_size=16_000)
        dm = AudioDataModule(cfg)
        dm.setup("fit")
        Path(out, f"rank{rank}").write_text(f"{len(checked)} {len(dm.datasets['train'])}")
    finally:
        dist.destroy_process_group()


def test_ddp_ranks_scan_the_corpus_once(tmp_path):
    """Under DDP rank 0 scans and records; the other ranks wait and read its record."""
    import socket

    import torch.multiprocessing as mp

    manifest_of(tmp_path, {f"{i}.flac": 1.0 for i in range(6)})
    (tmp_path / "valid.tsv").write_text((tmp_path / "train.tsv").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.start_processes(
        _ddp_setup, args=(2, str(tmp_path), port, str(tmp_path)), nprocs=2, start_method="fork"
    )
    assert (tmp_path / "rank0").read_text() == "12 6"  # train and valid, once
    assert (tmp_path / "rank1").read_text() == "0 6"
