"""Lightning pieces the run adds: once-per-update LR logging and crash-safe checkpoint files."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import LearningRateMonitor

from w2v2_pretrain.model_files import atomic_save


class UpdateLearningRateMonitor(LearningRateMonitor):
    """Lightning's `LearningRateMonitor`, writing once per update: under gradient accumulation
    the stock callback writes the same step once per micro-batch."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        batch_idx = args[2] if len(args) > 2 else kwargs.get("batch_idx", 0)
        if batch_idx % trainer.accumulate_grad_batches == 0:  # an update's first micro-batch
            super().on_train_batch_start(trainer, *args, **kwargs)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are either the old or the new one, whatever kills the process.

    Writes to a temporary file in the checkpoint's own folder, flushes it to disk, then renames
    it over the target (atomic on POSIX file systems) and syncs the folder. Lightning's own
    writer stages the file in the system's temp folder and moves it, which is a plain copy when
    that is another file system, and never syncs. Loading is ``weights_only=True``: a
    checkpoint cannot run code when it is read.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        atomic_save(checkpoint, Path(path))

    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)
