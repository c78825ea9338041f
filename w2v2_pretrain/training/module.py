"""The pretraining LightningModule: the model, its objective, fairseq's update semantics, and
what is logged once per update.

The pieces it is made of have files of their own: the update's sums and its metrics
(update_sums.py), the skip of a bad update (bad_updates.py), what an exact resume restores
(run_state.py), the loader's figures (throughput.py) and the codebook picture
(w2v2_pretrain/figures.py).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from typing_extensions import override

from w2v2_pretrain.data.collate import Batch
from w2v2_pretrain.data.config import BadFilePolicy
from w2v2_pretrain.errors import DataError, NonFiniteStop, TrainingError
from w2v2_pretrain.figures import codebook_usage_figure
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model
from w2v2_pretrain.models.noise import PerUtteranceNoise
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Output
from w2v2_pretrain.training import run_state
from w2v2_pretrain.training.bad_updates import StreakReader, scale_gradients, takes_found_inf
from w2v2_pretrain.training.health import chance_loss
from w2v2_pretrain.training.throughput import DataCounts, DataStats, peak_memory_mib
from w2v2_pretrain.training.update_sums import UpdateSums

log = logging.getLogger(__name__)  # what one rank met (a bad file in its batch)
run_log = run_logger(__name__)  # what holds on every rank alike (all-reduced): said once


class Wav2Vec2Pretraining(pl.LightningModule):
    """wav2vec 2.0 pretraining with fairseq's update semantics.

    An update's loss is the sum over every masked frame of all its micro-batches (gradient
    accumulation) and all ranks, divided by the masked frames summed over the same: so one
    process with a batch of 2B, one with 2 micro-batches of B and two with B each make the same
    update. Each micro-batch returns its unnormalised sum; once per update, before the
    optimizer step, one all-reduce brings every rank the update's masked frames and metric sums,
    and the gradients are scaled once. An update whose loss or gradients are not finite is
    skipped (the weights and optimizer state stay as they were), counted and logged;
    ``max_bad_updates`` in a row stop the run with a checkpoint.

    Args:
        model: the model config (a `Wav2Vec2Config`, or its plain data as checkpoints keep it).
        optimizer: partial optimizer, called with the parameters (Hydra ``_partial_``).
        scheduler: partial LR scheduler, called with the optimizer; stepped every update.
        sample_rate: audio rate, for throughput in audio-seconds.
        fixed_noise_seed: when set, the Gumbel noise of each utterance is drawn from a generator
            seeded by (this, utterance index), so a batch repeats exactly (overfitting one batch;
            comparing device layouts). Masks and distractors come with the batch.
        codebook_image_every: log a picture of codebook usage every N updates (0: never).
        compile: ``torch.compile`` the context network.
        max_bad_updates: stop after this many updates in a row skipped for non-finite values.
        on_bad_file: ``skip`` counts undecodable files met in training and goes on; ``error``
            stops all ranks together, with a checkpoint.
        bad_files_log: where to append the bad files met (``bad_files.tsv`` in the run folder).
        run_config: the run's resolved config as plain data, kept in checkpoints under
            ``run_config`` so a resume can say which settings changed (training/resume.py).
    """

    def __init__(
        self,
        model: Wav2Vec2Config | dict[str, Any],
        *,
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        sample_rate: int = 16_000,
        fixed_noise_seed: int | None = None,
        codebook_image_every: int = 500,
        compile: bool = False,
        max_bad_updates: int = 5,
        on_bad_file: BadFilePolicy | str = BadFilePolicy.skip,
        bad_files_log: str | None = None,
        run_config: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        cfg = model if isinstance(model, Wav2Vec2Config) else Wav2Vec2Config.from_dict(model)
        # stored in checkpoints as plain data; the whole run config is logged once by train()
        self.save_hyperparameters(
            {
                "model": cfg.to_dict(),
                "sample_rate": sample_rate,
                "fixed_noise_seed": fixed_noise_seed,
                "codebook_image_every": codebook_image_every,
                "compile": compile,
                "max_bad_updates": max_bad_updates,
            },
            logger=False,
        )
        self.cfg = cfg
        self.model = Wav2Vec2Model(cfg)  # validates the config
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.sample_rate = sample_rate
        self.fixed_noise_seed = fixed_noise_seed
        self.codebook_image_every = codebook_image_every
        self.compile = compile
        self.max_bad_updates = max_bad_updates
        self.on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
        self.bad_files_log = Path(bad_files_log) if bad_files_log else None
        self.run_config = run_config
        counts = torch.zeros(cfg.quantizer.num_codevectors)
        self.register_buffer("code_counts", counts, persistent=False)
        # so far, over all ranks: updates skipped, bad files met; and bad updates in a row
        for name in ("skipped_updates", "bad_files_met", "bad_streak"):
            self.register_buffer(name, torch.zeros((), dtype=torch.float64), persistent=False)
        self._streak = StreakReader(max_bad_updates)
        self._update: torch.Tensor | None = None  # this rank's `UpdateSums` vector, in progress
        self._update_bad_files: tuple[str, ...] = ()  # and its bad files
        self._update_data = DataCounts()  # host counts of the update in progress
        self._val: torch.Tensor | None = None
        self._last_update_end: float | None = None
        self._train_started: float | None = None
        self.data_stats = DataStats()  # the run's, for the end-of-run summary
        self._rng_to_restore: dict[str, Any] | None = None
        self._flush_pending = False  # a checkpoint was saved: flush the logger at the next batch

    def configure_model(self) -> None:
        if self.compile and not hasattr(self.model.context_network, "_orig_mod"):
            self.model.context_network = torch.compile(self.model.context_network)

    # -- the objective ------------------------------------------------------------------------

    def temperature(self) -> float:
        """Gumbel temperature of the current update (from the global step)."""
        return self.cfg.quantizer.temperature_at(self.global_step)

    def _forward(self, batch: Batch) -> Wav2Vec2Output:
        noise = None
        if self.fixed_noise_seed is not None and self.training:
            noise = PerUtteranceNoise(batch.ids, self.fixed_noise_seed)
        return self.model(
            batch.source,
            batch.lengths if batch.padded else None,
            temperature=self.temperature(),
            plan=batch.plan,
            noise=noise,
        )

    def _reduce(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every DDP rank (a collective: every rank must call it)."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(t.clone(), reduce_op="sum")
        return t

    def _zero_loss(self) -> torch.Tensor:
        """A loss of 0 that reaches every parameter: a rank whose batch is empty still runs
        backward, so DDP's gradient all-reduce is never left waiting."""
        return sum(p.sum() for p in self.parameters() if p.requires_grad) * 0.0

    def _note_bad_files(self, batch: Batch) -> None:
        self._update_bad_files += batch.bad_files
        for entry in batch.bad_files:
            log.warning("skipped a bad file: %s", entry)
            if self.bad_files_log is not None:
                with open(self.bad_files_log, "a") as f:  # one line, appended whole
                    f.write(f"update {self.global_step}\t{entry}\n")

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self._update is None:
            self._update = torch.zeros(UpdateSums.size(), dtype=torch.float64, device=self.device)
        self._note_bad_files(batch)
        self._update_data.add(batch)
        if len(batch) == 0:  # every file of the batch was a bad file
            self._update += UpdateSums.of(None, batch, self.device).to_vector()
            return self._zero_loss()
        out = self._forward(batch)
        self._update += UpdateSums.of(out, batch, self.device).to_vector()
        G, V = self.cfg.quantizer.num_groups, self.cfg.quantizer.num_vars
        codes = out.codes.reshape(-1, G) + torch.arange(G, device=out.codes.device) * V
        self.code_counts.index_add_(
            0, codes.flatten(), torch.ones_like(codes.flatten(), dtype=torch.float)
        )
        # Lightning divides by accumulate_grad_batches and DDP averages over ranks;
        # on_before_optimizer_step turns that into the sum / all masked frames of the update
        return out.loss.total

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Once per update: gather the update's sums over ranks, scale the gradients to the
        sum over every masked frame divided by their number, and decide whether to step."""
        if self._update is None:  # cannot happen: every update has micro-batches on every rank
            raise TrainingError("an optimizer step without a training batch")
        sums = UpdateSums.from_vector(self._reduce(self._update))
        self._update = None
        params = [p for p in self.parameters() if p.grad is not None]
        # undo Lightning's 1/accumulation and DDP's 1/world_size, divide by the update's frames
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        norm = scale_gradients(params, sums.num_masked, scale)
        ok = (sums.num_masked > 0) & (sums.nonfinite_loss == 0)
        if self._grad_scaler() is None:  # under 16-mixed, overflowing gradients are the scaler's
            ok &= torch.isfinite(norm)
        self.skipped_updates += (~ok).double()
        self.bad_files_met += sums.bad_files
        self.bad_streak = (self.bad_streak + 1) * (~ok)
        self._log_update(sums, norm)
        self._stop_on_bad_files(sums, params)
        self._step_or_skip(optimizer, params, ok)
        every = self.codebook_image_every
        if every and self.global_step % every == 0 and self.global_step > 0:
            self._log_codebook_usage()

    def _stop_on_bad_files(self, sums: UpdateSums, params: list[torch.nn.Parameter]) -> None:
        """With ``data.on_bad_file=error``, stop every rank at the update that met one."""
        mine, self._update_bad_files = self._update_bad_files, ()
        if self.on_bad_file != BadFilePolicy.error or not int(sums.bad_files):
            return
        for p in params:
            p.grad = None
        first = f": {mine[0]}" if mine else ""
        raise DataError(
            f"{int(sums.bad_files)} file(s) could not be decoded in update "
            f"{self.global_step}{first} (all in bad_files.tsv); data.on_bad_file=error "
            "stops here: remove them from the manifest (or set data.on_bad_file=skip) "
            "and resume"
        )

    def _step_or_skip(
        self, optimizer: torch.optim.Optimizer, params: list[torch.nn.Parameter], ok: torch.Tensor
    ) -> None:
        """Let the optimizer step only if ``ok``; stop after ``max_bad_updates`` bad in a row.

        With a fused Adam/AdamW (``optim.optimizer.fused=true``, the default) the skip is the
        optimizer's own ``found_inf`` flag, and the streak is read back only while one runs
        (`StreakReader`); any other optimizer reads ``ok`` on the host once per update and
        drops the gradients of a bad update (it then skips every parameter). Under 16-mixed the
        grad scaler skips overflowing gradients itself and lowers its scale, as usual; only a
        non-finite loss or an empty update counts as bad here.
        """
        if takes_found_inf(optimizer) and not self._grad_scaler():
            optimizer.found_inf = (~ok).float()
            streak = self._streak.read(self.bad_streak)
        else:
            if not bool(ok):
                for p in params:
                    p.grad = None
            streak = int(self.bad_streak)
        if streak:
            run_log.warning(
                "update %d skipped: non-finite loss or gradients, or no usable audio "
                "(%d in a row)",
                self.global_step,
                streak,
            )
        if streak >= self.max_bad_updates:
            raise NonFiniteStop(first=self.global_step - streak + 1, last=self.global_step)

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    # -- metrics ------------------------------------------------------------------------------

    def _log_update(self, sums: UpdateSums, grad_norm: torch.Tensor) -> None:
        metrics = sums.metrics(self.cfg.objective, "train")
        seconds = sums.audio_samples.float() / self.sample_rate
        metrics["train/update_audio_seconds"] = seconds
        metrics["train/grad_norm"] = grad_norm.float()
        metrics["train/skipped_updates"] = self.skipped_updates.float()
        metrics["train/bad_files"] = self.bad_files_met.float()
        now = time.perf_counter()
        if self._last_update_end is not None:
            metrics["train/audio_seconds_per_second"] = seconds / (now - self._last_update_end)
        since = self._last_update_end or self._train_started or now
        data, self._update_data = self._update_data, DataCounts()
        metrics |= self.data_stats.record(data, now - since)
        metrics["train/peak_memory_mib"] = peak_memory_mib(self.device)
        self._last_update_end = now
        bar = ("train/loss", "train/accuracy", "train/code_perplexity")
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k in bar, batch_size=1, sync_dist=False)
        self.log("train/temperature", self.temperature(), batch_size=1)

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(UpdateSums.size(), dtype=torch.float64, device=self.device)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._note_bad_files(batch)
        out = self._forward(batch) if len(batch) else None
        self._val += UpdateSums.of(out, batch, self.device).to_vector()

    def on_validation_epoch_end(self) -> None:
        sums = UpdateSums.from_vector(self._reduce(self._val))
        self._val = None
        for k, v in sums.metrics(self.cfg.objective, "val").items():
            self.log(k, v, prog_bar=k in ("val/loss", "val/accuracy"), sync_dist=False)
        self.log("val/contrastive_chance", chance_loss(self.cfg.objective.num_distractors))

    def _log_codebook_usage(self) -> None:
        """A picture of how often each codebook entry was chosen since the last picture."""
        counts = self._reduce(self.code_counts.clone())
        self.code_counts.zero_()
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            q = self.cfg.quantizer
            fig = codebook_usage_figure(
                counts.view(q.num_groups, q.num_vars).cpu().numpy(), self.global_step
            )
            experiment.add_figure("train/codebook_usage", fig, global_step=self.global_step)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("no optimizer configured")
        extra = {}
        if self._grad_scaler() is not None and getattr(self.optimizer_factory, "keywords", {}).get(
            "fused"
        ):
            # a fused optimizer unscales inside its step: the gradients this module scales,
            # measures and checks before the step would still carry the loss scale
            extra["fused"] = False
        optimizer = self.optimizer_factory(self.parameters(), **extra)
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {
                "scheduler": scheduler,
                "interval": "step",
                "frequency": 1,
                "name": "train/lr",  # LearningRateMonitor's tag
            },
        }

    # -- checkpoints: what an exact resume needs (training/run_state.py) -----------------------

    def _flush_logger(self) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if callable(getattr(experiment, "flush", None)):
            experiment.flush()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:  # noqa: ARG002
        # the update a checkpoint was saved at logs its metrics after the save (Lightning logs
        # after the batch-end callbacks): flush them at the next batch, so that a kill -9 soon
        # after the save loses no update the resumed run will not log again
        if self._flush_pending:
            self._flush_pending = False
            self._flush_logger()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # what was logged up to this checkpoint reaches the disk before it, and the metrics of
        # its own update as soon as Lightning logs them (CheckpointedTensorBoardLogger), else at
        # the next batch (see above)
        self._flush_logger()
        self._flush_pending = True
        if hasattr(self.logger, "flush_next"):
            self.logger.flush_next = True
        checkpoint["rng_states"] = run_state.rng_states()
        checkpoint["run_counters"] = torch.stack([self.skipped_updates, self.bad_files_met]).cpu()
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        # a stop signal inside a validation of training (the save-on-exception checkpoint):
        # the resume runs it again (`run_state.redo_interrupted_validation`)
        trainer = self._trainer
        in_validation = self._val is not None and trainer is not None
        if in_validation and trainer.state.fn == "fit" and not trainer.sanity_checking:
            checkpoint["validation_interrupted"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied when training starts, after everything else that set up the run drew numbers
        self._rng_to_restore = checkpoint.get("rng_states")
        run_state.forget_finished_epochs_batches(checkpoint)
        if checkpoint.get("validation_interrupted"):
            run_state.redo_interrupted_validation(checkpoint)
        if "run_counters" in checkpoint:
            skipped, bad_files = checkpoint["run_counters"].tolist()
            self.skipped_updates.fill_(skipped)
            self.bad_files_met.fill_(bad_files)
        # the batch sampler continues the interrupted epoch (its loader is made after this)
        datamodule = getattr(self._trainer, "datamodule", None)
        if hasattr(datamodule, "resume_at"):
            datamodule.resume_at(*run_state.data_position(checkpoint))

    def on_train_start(self) -> None:
        self._train_started = time.perf_counter()  # the first update's wait counts from here
        state, self._rng_to_restore = self._rng_to_restore, None
        if state:
            run_state.restore_rng_states(state)
