"""The data module on manifest folders: set-up and loaders, a file broken after set-up, a worker's
error as one line, several corpora with their sampling shares (from the command line too)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import (
    FAST,
    compose_cfg,
    error_line,
    manifest_of,
)

from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.data.datamodule import AudioDataModule
from w2v2_pretrain.data.manifest import build_manifests
from w2v2_pretrain.errors import DataError, one_line


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
