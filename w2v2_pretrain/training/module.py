"""The pretraining LightningModule: the model, its objective, schedules, metrics and logging."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from typing_extensions import override

from w2v2_pretrain.data.dataset import BadFilePolicy, Batch
from w2v2_pretrain.errors import DataError, NonFiniteStop, TrainingError
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model
from w2v2_pretrain.models.noise import PerUtteranceNoise
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Output
from w2v2_pretrain.training.health import chance_loss
from w2v2_pretrain.training.throughput import DataStats, UpdateSums, peak_memory_mib

log = logging.getLogger(__name__)  # what one rank met (a bad file in its batch)
run_log = run_logger(__name__)  # what holds on every rank alike (all-reduced): said once

# What one micro-batch adds to its update's sums (one vector, so one all-reduce per update).
_SUMS = (
    "total",  # loss summed over masked frames (fairseq's criterion output)
    "contrastive",  # summed over masked frames
    "num_masked",
    "correct",
    "count",
    "diversity",  # per micro-batch values, averaged over the update's micro-batches
    "feature_penalty",
    "prob_perplexity",
    "code_perplexity",
    "identical_distractors",
    "micro_batches",  # micro-batches with at least one utterance
    "valid_frames",
    "audio_samples",
    "bad_files",
    "nonfinite_loss",
)
_AT = {name: i for i, name in enumerate(_SUMS)}


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
        model: the model config as plain data (`Wav2Vec2Config` fields; Hydra group ``model``).
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
        bad_files_log: where to append the files left out (``bad_files.tsv`` in the run folder).
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        sample_rate: int = 16_000,
        fixed_noise_seed: int | None = None,
        codebook_image_every: int = 500,
        compile: bool = False,
        max_bad_updates: int = 5,
        on_bad_file: BadFilePolicy | str = BadFilePolicy.skip,
        bad_files_log: str | None = None,
    ) -> None:
        super().__init__()
        # stored in checkpoints; the whole run config is logged once by train()
        self.save_hyperparameters(
            ignore=["optimizer", "scheduler", "on_bad_file", "bad_files_log"], logger=False
        )
        self.cfg = Wav2Vec2Config.from_dict(model)  # validated by Wav2Vec2Model
        self.model = Wav2Vec2Model(self.cfg)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.sample_rate = sample_rate
        self.fixed_noise_seed = fixed_noise_seed
        self.codebook_image_every = codebook_image_every
        self.compile = compile
        self.max_bad_updates = max_bad_updates
        self.on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
        self.bad_files_log = Path(bad_files_log) if bad_files_log else None
        self.register_buffer(
            "code_counts", torch.zeros(self.cfg.quantizer.num_codevectors), persistent=False
        )
        self._update: torch.Tensor | None = None  # this rank's sums of the update in progress
        self._update_bad_files: tuple[str, ...] = ()  # and the files it left out
        self._val: torch.Tensor | None = None
        # skipped updates and files left out, so far (all ranks), and bad updates in a row
        self.register_buffer("_counters", torch.zeros(2, dtype=torch.float64), persistent=False)
        self.register_buffer("_streak", torch.zeros((), dtype=torch.float64), persistent=False)
        self._streak_seen: torch.Tensor | None = None  # the last update's streak, on the host
        self._streak_copied: torch.cuda.Event | None = None
        self._last_update_end: float | None = None
        self._train_started: float | None = None
        self._update_data = UpdateSums()  # host counts of the update in progress
        self.data_stats = DataStats()  # the run's, for the end-of-run summary
        self._rng_to_restore: dict[str, Any] | None = None
        self.run_config: dict[str, Any] | None = None
        """The run's resolved config as plain data (set by ``train``): kept in checkpoints under
        ``run_config``, so a resume can say which settings changed (training/resume.py)."""
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

    def _sums(self, out: Wav2Vec2Output | None, batch: Batch) -> torch.Tensor:
        """This micro-batch's contribution to ``_SUMS`` (float64, on the device; built from
        device scalars, so nothing is copied from or read back to the host)."""
        bad = torch.full((), len(batch.bad_files), dtype=torch.float64, device=self.device)
        if out is None:
            zero = torch.zeros((), dtype=torch.float64, device=self.device)
            return torch.stack([bad if k == "bad_files" else zero for k in _SUMS])
        loss = out.loss
        total = loss.total.detach()
        parts = {
            "total": total,
            "contrastive": loss.contrastive.detach(),
            "num_masked": loss.num_masked,
            "correct": loss.correct,
            "count": loss.count,
            "diversity": loss.diversity.detach(),
            "feature_penalty": loss.feature_penalty.detach(),
            "prob_perplexity": loss.prob_perplexity,
            "code_perplexity": loss.code_perplexity,
            "identical_distractors": loss.identical_distractors,
            "micro_batches": torch.ones((), device=self.device),
            "valid_frames": out.frame_lengths.sum(),
            "audio_samples": batch.lengths.sum(),
            "bad_files": bad,
            "nonfinite_loss": ~torch.isfinite(total),
        }
        return torch.stack([parts[k].double() for k in _SUMS])

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
            log.warning("left out %s", entry)
            if self.bad_files_log is not None:
                with open(self.bad_files_log, "a") as f:  # one line, appended whole
                    f.write(f"update {self.global_step}\t{entry}\n")

    @override
    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor:
        if self._update is None:
            self._update = torch.zeros(len(_SUMS), dtype=torch.float64, device=self.device)
        self._note_bad_files(batch)
        self._update_data.add(batch)
        if len(batch) == 0:  # every file of the batch was left out
            self._update += self._sums(None, batch)
            return self._zero_loss()
        out = self._forward(batch)
        self._update += self._sums(out, batch)
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
        sums, self._update = self._reduce(self._update), None
        params = [p for p in self.parameters() if p.grad is not None]
        grads = [p.grad for p in params]
        masked = sums[_AT["num_masked"]]
        # undo Lightning's 1/accumulation and DDP's 1/world_size, divide by the update's frames
        scale = self.trainer.accumulate_grad_batches * self.trainer.world_size
        factor = torch.where(masked > 0, scale / masked.clamp(min=1), 0.0).float()
        if grads:
            torch._foreach_mul_(grads, factor)
            norm = torch.nn.utils.get_total_norm(grads)
        else:
            norm = torch.zeros((), device=self.device)
        ok = (masked > 0) & (sums[_AT["nonfinite_loss"]] == 0)
        if self._grad_scaler() is None:  # under 16-mixed, overflowing gradients are the scaler's
            ok &= torch.isfinite(norm)
        self._counters += torch.stack([(~ok).double(), sums[_AT["bad_files"]]])
        self._streak = (self._streak + 1) * (~ok)
        self._log_update(sums, norm)
        self._step_or_skip(optimizer, params, ok, sums)
        every = self.codebook_image_every
        if every and self.global_step % every == 0 and self.global_step > 0:
            self._log_codebook_usage()

    def _step_or_skip(
        self,
        optimizer: torch.optim.Optimizer,
        params: list[torch.nn.Parameter],
        ok: torch.Tensor,
        sums: torch.Tensor,
    ) -> None:
        """Let the optimizer step only if ``ok``; stop after ``max_bad_updates`` bad in a row.

        With a fused Adam/AdamW (``optim.optimizer.fused=true``, the default) the skip is the
        optimizer's own ``found_inf`` flag, so the update reads nothing back from the device
        unless a streak of bad updates is running (`_streak_if_running`); any other optimizer
        reads ``ok`` on the host once per update and drops the gradients of a bad update (it
        then skips every parameter). Under 16-mixed the grad scaler skips overflowing gradients
        itself and lowers its scale, as usual; only a non-finite loss or an empty update counts
        as bad here.
        """
        mine, self._update_bad_files = self._update_bad_files, ()
        if self.on_bad_file == BadFilePolicy.error and int(sums[_AT["bad_files"]]):
            for p in params:
                p.grad = None
            first = f": {mine[0]}" if mine else ""
            raise DataError(
                f"{int(sums[_AT['bad_files']])} file(s) could not be decoded in update "
                f"{self.global_step}{first} (all in bad_files.tsv); data.on_bad_file=error "
                "stops here: remove them from the manifest (or set data.on_bad_file=skip) "
                "and resume"
            )
        if _takes_found_inf(optimizer) and not self._grad_scaler():
            optimizer.found_inf = (~ok).float()
            streak = self._streak_if_running()
        else:
            if not bool(ok):
                for p in params:
                    p.grad = None
            streak = int(self._streak)
        if streak:
            run_log.warning(
                "update %d skipped: non-finite loss or gradients, or no usable audio "
                "(%d in a row)",
                self.global_step,
                streak,
            )
        if streak >= self.max_bad_updates:
            raise NonFiniteStop(first=self.global_step - streak + 1, last=self.global_step)

    def _streak_if_running(self) -> int:
        """The bad-update streak including this update, read from the device only while one
        is running; 0 when none was running before this update.

        Each update queues a copy of its streak to host memory (non-blocking); the next update
        reads that copy, so an update without a running streak waits for nothing. A streak's
        first update is therefore seen one update late, which still stops at exactly
        ``max_bad_updates`` (from 2 on; with 1 every update reads its own streak).
        """
        running = self.max_bad_updates <= 1
        if self._streak_seen is not None:
            if self._streak_copied is not None:
                self._streak_copied.synchronize()  # the previous update's copy: long done
            running |= bool(self._streak_seen.numpy() > 0)  # host memory: no device read
        else:
            pinned = self.device.type == "cuda"
            self._streak_seen = torch.zeros((), dtype=torch.float64, pin_memory=pinned)
        self._streak_seen.copy_(self._streak, non_blocking=True)
        if self.device.type == "cuda":
            self._streak_copied = torch.cuda.Event()
            self._streak_copied.record()
        return int(self._streak) if running else 0

    def _grad_scaler(self) -> Any:
        return getattr(self.trainer.precision_plugin, "scaler", None)

    # -- metrics ------------------------------------------------------------------------------

    def _update_metrics(self, sums: torch.Tensor, prefix: str) -> dict[str, torch.Tensor]:
        """Per-update (or per-validation) metrics from summed parts: losses per masked frame in
        nats, accuracy over all scored frames, batch statistics averaged over micro-batches."""
        s = {k: sums[i] for k, i in _AT.items()}
        m = s["num_masked"].clamp(min=1)
        n = s["micro_batches"].clamp(min=1)
        ob = self.cfg.objective
        diversity, penalty = s["diversity"] / n, s["feature_penalty"] / n
        out = {
            "loss": s["total"] / m,
            "contrastive": s["contrastive"] / m,
            "diversity": diversity,
            "feature_penalty": penalty,
            "weighted_diversity": ob.diversity_weight * diversity,
            "weighted_feature_penalty": ob.feature_penalty_weight * penalty,
            "accuracy": s["correct"] / s["count"].clamp(min=1),
            "code_perplexity": s["code_perplexity"] / n,
            "prob_perplexity": s["prob_perplexity"] / n,
            "identical_distractors": s["identical_distractors"] / n,
            "masked_fraction": s["num_masked"] / s["valid_frames"].clamp(min=1),
        }
        return {f"{prefix}/{k}": v.float() for k, v in out.items()}

    def _log_update(self, sums: torch.Tensor, grad_norm: torch.Tensor) -> None:
        metrics = self._update_metrics(sums, "train")
        seconds = sums[_AT["audio_samples"]].float() / self.sample_rate
        metrics["train/update_audio_seconds"] = seconds
        metrics["train/grad_norm"] = grad_norm.float()
        metrics["train/skipped_updates"] = self._counters[0].float()
        metrics["train/bad_files"] = self._counters[1].float()
        now = time.perf_counter()
        if self._last_update_end is not None:
            metrics["train/audio_seconds_per_second"] = seconds / (now - self._last_update_end)
        since = self._last_update_end or self._train_started or now
        data, self._update_data = self._update_data, UpdateSums()
        metrics |= self.data_stats.record(data, now - since)
        metrics["train/peak_memory_mib"] = peak_memory_mib(self.device)
        self._last_update_end = now
        bar = ("train/loss", "train/accuracy", "train/code_perplexity")
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k in bar, batch_size=1, sync_dist=False)
        self.log("train/temperature", self.temperature(), batch_size=1)

    # -- validation ---------------------------------------------------------------------------

    def on_validation_epoch_start(self) -> None:
        self._val = torch.zeros(len(_SUMS), dtype=torch.float64, device=self.device)

    @override
    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        self._note_bad_files(batch)
        out = self._forward(batch) if len(batch) else None
        self._val += self._sums(out, batch)

    def on_validation_epoch_end(self) -> None:
        sums, self._val = self._reduce(self._val), None
        metrics = self._update_metrics(sums, "val")
        for k, v in metrics.items():
            self.log(k, v, prog_bar=k in ("val/loss", "val/accuracy"), sync_dist=False)
        self.log("val/contrastive_chance", chance_loss(self.cfg.objective.num_distractors))

    # -- monitoring ---------------------------------------------------------------------------

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

    # -- exact resume: random state travels with the checkpoint -------------------------------

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
        # its own update at the next batch (on_train_batch_start): a kill -9 after the save
        # loses no logged update (the resumed run logs from the checkpoint's step on)
        self._flush_logger()
        self._flush_pending = True
        # plain types and tensors only: checkpoints load with torch.load(weights_only=True)
        name, keys, pos, has_gauss, gauss = np.random.get_state()
        version, internal, gauss_next = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(internal), gauss_next],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        checkpoint["rng_states"] = state
        checkpoint["run_counters"] = self._counters.cpu()
        if self.run_config is not None:
            checkpoint["run_config"] = self.run_config
        # a stop signal inside a validation of training (the save-on-exception checkpoint):
        # the resume runs it again (`_redo_interrupted_validation`)
        trainer = self._trainer
        in_validation = self._val is not None and trainer is not None
        if in_validation and trainer.state.fn == "fit" and not trainer.sanity_checking:
            checkpoint["validation_interrupted"] = True

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied when training starts, after everything else that set up the run drew numbers
        self._rng_to_restore = checkpoint.get("rng_states")
        _forget_finished_epochs_batches(checkpoint)
        if checkpoint.get("validation_interrupted"):
            _redo_interrupted_validation(checkpoint)
        if "run_counters" in checkpoint:
            self._counters.copy_(checkpoint["run_counters"])

    def on_train_start(self) -> None:
        self._train_started = time.perf_counter()  # the first update's wait counts from here
        state, self._rng_to_restore = self._rng_to_restore, None
        if state:
            torch.set_rng_state(state["torch"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = state["python"]
            random.setstate((version, tuple(internal), gauss_next))
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])


def _takes_found_inf(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the optimizer skips its step on device when ``optimizer.found_inf`` is 1 (torch's
    fused Adam and AdamW: the mechanism the AMP grad scaler uses)."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Lightning wraps optimizers
    return isinstance(inner, torch.optim.Adam) and bool(inner.defaults.get("fused"))


def codebook_usage_figure(counts: np.ndarray, step: int):
    """Bar chart per codebook of how often each entry was chosen; collapse shows at a glance.

    Shape:
        counts: (G, V) choices per entry.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    G, V = counts.shape
    fig, axes = plt.subplots(G, 1, figsize=(10, 1.8 * G), squeeze=False)
    for g in range(G):
        freq = counts[g] / max(counts[g].sum(), 1)
        axes[g, 0].bar(np.arange(V), freq, width=1.0)
        axes[g, 0].set_ylabel(f"codebook {g}")
        axes[g, 0].set_title(
            f"{int((counts[g] > 0).sum())}/{V} entries used", fontsize=8, loc="right"
        )
        axes[g, 0].set_xlim(-0.5, V - 0.5)
    axes[-1, 0].set_xlabel("entry")
    fig.suptitle(f"codebook usage, step {step}")
    fig.tight_layout()
    return fig


def _forget_finished_epochs_batches(checkpoint: dict[str, Any]) -> None:
    """A checkpoint saved after an epoch ended and before the next began (a SIGTERM there)
    still counts the finished epoch's batches as the current epoch's; Lightning would resume
    the next epoch as if those were done (and the data loader skip them). Zero that count."""
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return
    if epochs["current"]["started"] == epochs["current"]["completed"]:
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False


def _redo_interrupted_validation(checkpoint: dict[str, Any]) -> None:
    """Make Lightning run again, whole, the validation a stop signal interrupted.

    Lightning raises its SIGTERM stop at the end of a validation batch
    (``_EvaluationLoop._evaluation_step``), so the checkpoint's validation progress has every
    started batch completed, and its training progress every batch completed: the state it
    also has when a checkpoint is saved at the end of a whole validation. On restart
    ``_TrainingEpochLoop.advance`` therefore takes the validation as done ("saved on last") and
    skips it; it runs a validation again only when ``restarted_mid_evaluation``, which needs a
    validation batch started and not processed. See ``advance`` and
    ``_EvaluationLoop.update_restart_stage``:
    https://github.com/Lightning-AI/pytorch-lightning/blob/2.6.6/src/lightning/pytorch/loops/training_epoch_loop.py
    So the progress is given that form, with no batch of this validation counted as done: its
    sums are not in the checkpoint, and a validation resumed from the saved progress would run
    only its remaining batches (https://github.com/Lightning-AI/pytorch-lightning/issues/19549).
    The validation then runs from its first batch, at the same update and TensorBoard step,
    and best.ckpt and the run-health checks see it.
    """
    loop = checkpoint.get("loops", {}).get("fit_loop", {})
    progress = loop.get("epoch_loop.val_loop.batch_progress")
    if not progress:
        return
    started = max(1, progress["total"]["started"])
    progress["total"] = {"ready": started, "started": started}
    progress["total"] |= {"processed": started - 1, "completed": started - 1}
    progress["current"] = dict.fromkeys(progress["current"], 0)
    progress["is_last_batch"] = False
