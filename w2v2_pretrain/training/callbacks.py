"""Lightning pieces the run adds: once-per-update LR logging, crash-safe checkpoint files and
TensorBoard events, a progress bar closed on every way out, and a model summary that counts the
FLOPs of a training step."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO
from pytorch_lightning.callbacks import (
    LearningRateMonitor,
    ModelSummary,
    RichModelSummary,
    TQDMProgressBar,
)
from pytorch_lightning.loggers import TensorBoardLogger
from pytorch_lightning.utilities import rank_zero_only
from pytorch_lightning.utilities.model_summary import get_human_readable_count
from typing_extensions import override

from w2v2_pretrain.errors import CheckpointWriteError
from w2v2_pretrain.model_files import atomic_save
from w2v2_pretrain.models.flops import BASE_CROP_SECONDS, training_flops_per_audio_second


class UpdateLearningRateMonitor(LearningRateMonitor):
    """Lightning's `LearningRateMonitor`, writing once per update: under gradient accumulation
    the stock callback writes the same step once per micro-batch."""

    def on_train_batch_start(self, trainer: pl.Trainer, *args: Any, **kwargs: Any) -> None:
        batch_idx = args[2] if len(args) > 2 else kwargs.get("batch_idx", 0)
        if batch_idx % trainer.accumulate_grad_batches == 0:  # an update's first micro-batch
            super().on_train_batch_start(trainer, *args, **kwargs)


class CheckpointedTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger, writing to disk the metrics of an update a checkpoint was
    saved at as soon as they are logged (the module sets ``flush_next`` when it saves).

    Lightning logs an update's metrics after its batch-end callbacks, where ModelCheckpoint
    saves; until the next flush they wait in the writer's queue, and a kill -9 there (during
    the next batch's data loading, say) would lose an update that the resumed run, starting
    after the checkpoint, never logs again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.flush_next = False

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        if self.flush_next:
            self.flush_next = False
            self.experiment.flush()


class ProgressBar(TQDMProgressBar):
    """Lightning's progress bar, closed also when a run stops on an error or a signal.

    Lightning closes its bars only at the end of a stage; a bar left open by an exception is
    drawn once more when the process exits, after the run's summary (and, in a test session,
    after pytest's)."""

    _BARS = ("train_progress_bar", "val_progress_bar", "test_progress_bar", "predict_progress_bar")

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception) -> None:
        for name in self._BARS:
            try:
                bar = getattr(self, name)
            except TypeError:  # Lightning's way of saying that bar was never made
                continue
            bar.close()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoint files that are either the old or the new one, whatever kills the process.

    Writes to a temporary file in the checkpoint's own folder, flushes it to disk, then renames
    it over the target (atomic on POSIX file systems) and syncs the folder. Lightning's own
    writer stages the file in the system's temp folder and moves it, which is a plain copy when
    that is another file system, and never syncs. Loading is ``weights_only=True``: a
    checkpoint cannot run code when it is read.

    A write that fails (a full disk, a quota, an I/O error) stops the run with one line that
    says which checkpoint is intact; no further write is tried this run (Lightning's
    save-on-exception would otherwise write two more files onto the full disk).
    """

    def __init__(self) -> None:
        super().__init__()
        self.failed: str | None = None
        self._last_step: int | None = None  # the update of this start's last whole last.ckpt

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike, storage_options: Any = None
    ) -> None:
        if storage_options is not None:
            raise TypeError("AtomicCheckpointIO takes no storage_options")
        if self.failed:
            return  # the run is stopping on that failure
        path = Path(path)
        try:
            atomic_save(checkpoint, path)
        except (OSError, RuntimeError) as e:
            cause = _os_error(e)
            if cause is None:
                raise
            self.failed = f"{path}: not written: {cause.strerror or cause}"
            last = path.parent / "last.ckpt"
            if self._last_step is not None:
                intact = f"{last} (update {self._last_step}) is intact"
            elif last.is_file():
                intact = f"{last} is intact, as the previous start left it"
            else:
                intact = "no checkpoint was written before"
            raise CheckpointWriteError(
                f"{self.failed}; the run stopped and writes nothing more; {intact}; free "
                "space, then continue with resume=true"
            ) from None
        if path.name == "last.ckpt":
            self._last_step = int(checkpoint.get("global_step", 0))

    @override  # always weights-only, whatever Lightning asks for: nothing in a file runs code
    def load_checkpoint(
        self, path: str | os.PathLike, map_location: Any = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        return torch.load(path, map_location=map_location or "cpu", weights_only=True)


def _os_error(e: BaseException | None) -> OSError | None:
    """The OSError behind ``e``: torch's zip writer reports a failed ``write`` (a full disk) as
    a RuntimeError raised while handling it."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def _rich_available() -> bool:
    try:
        import rich  # noqa: F401
    except ImportError:
        return False
    return True


class FlopsModelSummary(RichModelSummary if _rich_available() else ModelSummary):
    """Lightning's model summary (the rich table where rich is installed, as Lightning's
    default), with the FLOPs of a training step instead of 0.

    Lightning counts a forward of ``example_input_array``, which the module has none of. This
    counts a forward and backward of the model on one clip of ``seconds`` (default: fairseq
    BASE's longest crop, 15.6 s; see `training_flops_per_audio_second`) and shows it per
    audio-second on the ``model`` row and as the total.
    """

    def __init__(
        self, max_depth: int = 1, seconds: float | None = None, **summarize_kwargs: Any
    ) -> None:
        super().__init__(max_depth, **summarize_kwargs)
        self.seconds = seconds
        self._flops = 0

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._max_depth and trainer.is_global_zero:
            seconds = self.seconds or BASE_CROP_SECONDS
            self._flops = int(training_flops_per_audio_second(pl_module.cfg, seconds))
        super().on_fit_start(trainer, pl_module)

    @override  # shows the counted FLOPs in place of Lightning's total_flops (0: no example input)
    def summarize(
        self,
        summary_data: list[tuple[str, list[str]]],
        total_parameters: int,
        trainable_parameters: int,
        model_size: float,
        total_training_modes: dict[str, int],
        total_flops: int,
        **summarize_kwargs: Any,
    ) -> None:
        names = dict(summary_data)["Name"]
        per_second = f"{get_human_readable_count(self._flops)} / audio-s"
        flops = [per_second if name == "model" else "-" for name in names]
        super().summarize(
            [(col, flops if col == "FLOPs" else values) for col, values in summary_data],
            total_parameters,
            trainable_parameters,
            model_size,
            total_training_modes,
            self._flops,
            **summarize_kwargs,
        )
