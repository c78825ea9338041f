"""Is the data the bottleneck? Loader wait, padding and cropping, peak memory per update, and
the end-of-run summary's advice."""

from __future__ import annotations

import statistics
import time

import numpy as np
import pytorch_lightning as pl
from helpers import FAST, compose_cfg, scalars, small_manifests

from w2v2_pretrain.cli.pretrain import summary
from w2v2_pretrain.data.collate import Collator
from w2v2_pretrain.data.dataset import Utterance
from w2v2_pretrain.train import build, train
from w2v2_pretrain.training.config import run_config
from w2v2_pretrain.training.result import run_result
from w2v2_pretrain.training.throughput import WAIT_ADVICE, DataCounts, DataStats

TAGS = ("data_wait_fraction", "padding_fraction", "cropped_fraction", "peak_memory_mib")
RUN = ["trainer.max_steps=4", "trainer.log_every_n_steps=1", "trainer.limit_val_batches=0"]


def test_collator_counts_what_it_pads_and_crops():
    items = [Utterance(i, np.ones(n, dtype=np.float32), (1, 0, i)) for i, n in enumerate((3, 5))]
    cropped = Collator("crop")(items)
    assert (cropped.read_samples, cropped.kept_samples, cropped.padding_samples) == (8, 6, 0)
    padded = Collator("pad")(items)
    assert (padded.read_samples, padded.kept_samples, padded.padding_samples) == (8, 8, 2)


def test_data_figures_logged_per_update_and_no_advice_in_a_normal_run(tmp_path):
    """A short real run logs the four data tags once per update, fractions in [0, 1] (crop:
    nothing padded, a little cropped from clips of 2.2-2.5 s), peak memory in MiB; the loader
    keeps up, so the summary has no data line."""
    manifests = small_manifests(tmp_path, 8)
    cfg = compose_cfg(
        [*FAST, f"data.manifest_dir={manifests}", "data.max_tokens=120000", *RUN], tmp_path
    )
    result = train(cfg)
    logged = scalars(tmp_path)
    for tag in TAGS:
        assert [step for step, _ in logged[f"train/{tag}"]] == [0, 1, 2, 3], tag
    for tag in TAGS[:3]:
        assert all(0 <= v <= 1 for _, v in logged[f"train/{tag}"]), tag
    assert all(v == 0 for _, v in logged["train/padding_fraction"])
    cropped = [v for _, v in logged["train/cropped_fraction"]]
    assert all(0 <= v < 0.2 for v in cropped) and any(v > 0 for v in cropped), cropped
    assert all(100 < v < 64 * 1024 for _, v in logged["train/peak_memory_mib"])
    text = summary(result)
    assert result.data_lines == [] and "data:" not in text, text


class SlowReads:
    """The run's training dataset, each item read ``delay`` seconds late (a slow disk)."""

    def __init__(self, dataset, delay: float) -> None:
        self.dataset, self.delay = dataset, delay

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        time.sleep(self.delay)
        return self.dataset[key]

    def __getattr__(self, name):  # sizes, manifest: what the sampler reads
        return getattr(self.dataset, name)


def test_slow_loading_is_named_in_the_summary_with_what_to_change(tmp_path):
    manifests = small_manifests(tmp_path, 8)
    cfg = compose_cfg(
        [*FAST, f"data.manifest_dir={manifests}", "data.max_tokens=80000", *RUN], tmp_path
    )
    pl.seed_everything(cfg.seed)
    datamodule, module, trainer = build(cfg)
    datamodule.setup("fit")
    datamodule.datasets["train"] = SlowReads(datamodule.datasets["train"], delay=0.5)
    trainer.fit(module, datamodule=datamodule)
    waits = [v for _, v in scalars(tmp_path)["train/data_wait_fraction"]]
    assert len(waits) == 4 and statistics.median(waits) > WAIT_ADVICE, waits
    text = summary(run_result(run_config(cfg), trainer, module, {}, None))
    assert "data:         loading held training back: the step waited for data" in text, text
    assert "Try data.num_workers=2 (now 0;" in text or "Try data.num_workers=1 (now 0;" in text


def test_waste_advice_names_the_settings():
    stats = DataStats()
    stats.record(DataCounts(read_samples=100, kept_samples=70, padding_samples=0), 1.0)
    lines = stats.advice(num_workers=2, cores=2, collate="crop")
    assert len(lines) == 1 and lines[0].startswith("cropping: data.collate=crop threw away 30%")
    stats = DataStats()
    stats.record(DataCounts(read_samples=100, kept_samples=100, padding_samples=50), 1.0)
    assert stats.advice(num_workers=2, cores=2, collate="pad")[0].startswith("padding: 33%")
