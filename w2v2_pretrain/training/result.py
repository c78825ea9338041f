"""What a run reports when it ends: where its outputs are, the final validation beside chance,
how it stopped, and the run-health, probe and data lines of the end-of-run summary."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytorch_lightning as pl

from w2v2_pretrain.training.config import RunConfig
from w2v2_pretrain.training.health import RunHealthMonitor, chance_loss
from w2v2_pretrain.training.module import Wav2Vec2Pretraining
from w2v2_pretrain.training.probe_callback import probe_summary_lines
from w2v2_pretrain.training.throughput import cores_per_process


@dataclass
class TrainResult:
    """Where the run wrote its outputs, its final validation metrics and how it went."""

    output_dir: Path
    checkpoint_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    global_step: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    chance: float = float("nan")
    """Contrastive loss at chance, ln(K+1) nats."""
    warnings: list[str] = field(default_factory=list)
    """Run-health warnings raised during the run."""
    stopped_by: str | None = None
    """``SIGTERM`` (a scheduler) or ``SIGINT`` (Ctrl-C) when a signal stopped the run; in
    training, after the current update and with a checkpoint."""
    probe_lines: list[str] = field(default_factory=list)
    """The latest probe round's summary lines (empty when probes are off)."""
    data_lines: list[str] = field(default_factory=list)
    """Whether loading held training back, or padding / cropping wasted much, and what to
    change (empty when neither; training/throughput.py)."""


def run_result(
    run: RunConfig,
    trainer: pl.Trainer,
    module: Wav2Vec2Pretraining,
    metrics: dict[str, float],
    stopped_by: str | None,
) -> TrainResult:
    """What the run did, for the end-of-run summary (cli/pretrain.py)."""
    checkpoint_dir = Path(run.paths.checkpoint_dir)
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path:
            best = Path(cb.best_model_path)
    monitor = next(c for c in trainer.callbacks if isinstance(c, RunHealthMonitor))
    last = checkpoint_dir / "last.ckpt"
    return TrainResult(
        output_dir=Path(run.paths.output_dir),
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best,
        global_step=trainer.global_step,
        val_metrics=metrics,
        chance=chance_loss(module.cfg.objective.num_distractors),
        warnings=[w.message for w in monitor.warnings],
        stopped_by=stopped_by,
        probe_lines=probe_summary_lines(trainer.callbacks),
        data_lines=module.data_stats.advice(
            num_workers=run.data.num_workers,
            cores=cores_per_process(trainer.num_devices),
            collate=str(run.data.collate),
            bad_files=int(module.bad_files_met),
        ),
    )
