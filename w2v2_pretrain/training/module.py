"""The pretraining LightningModule: the model, its objective, schedules, metrics and logging."""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch

from w2v2_pretrain.data.dataset import Batch
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model
from w2v2_pretrain.models.noise import PerUtteranceNoise
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Output


class Wav2Vec2Pretraining(pl.LightningModule):
    """wav2vec 2.0 pretraining.

    The loss of every update is the sum over masked frames divided by the masked frames summed
    over all ranks, so an update does not depend on how a batch is split across devices.

    Args:
        model: the model config as plain data (`Wav2Vec2Config` fields; Hydra group ``model``).
        optimizer: partial optimizer, called with the parameters (Hydra ``_partial_``).
        scheduler: partial LR scheduler, called with the optimizer; stepped every update.
        sample_rate: audio rate, for throughput in audio-seconds.
        fixed_noise_seed: when set, masks, distractors and Gumbel noise of each utterance are
            drawn from a generator seeded by (this, utterance index) at every step, so a batch
            repeats exactly (overfitting one batch; comparing device layouts).
        val_noise_seed: the same for validation, so validation metrics are comparable across
            evaluations.
        codebook_image_every: log a picture of codebook usage every N updates (0: never).
        compile: ``torch.compile`` the context network.
    """

    def __init__(
        self,
        model: dict[str, Any],
        optimizer: Callable[..., torch.optim.Optimizer] | None = None,
        scheduler: Callable[..., Any] | None = None,
        sample_rate: int = 16_000,
        fixed_noise_seed: int | None = None,
        val_noise_seed: int = 12345,
        codebook_image_every: int = 500,
        compile: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["optimizer", "scheduler"])
        self.cfg = Wav2Vec2Config.from_dict(model)  # validated by Wav2Vec2Model
        self.model = Wav2Vec2Model(self.cfg)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.sample_rate = sample_rate
        self.fixed_noise_seed = fixed_noise_seed
        self.val_noise_seed = val_noise_seed
        self.codebook_image_every = codebook_image_every
        self.compile = compile
        q = self.cfg.quantizer
        self.register_buffer(
            "code_counts", torch.zeros(q.num_groups, q.num_vars), persistent=False
        )
        self._last_batch_end: float | None = None
        self._rng_to_restore: dict[str, Any] | None = None

    def configure_model(self) -> None:
        if self.compile and not hasattr(self.model.context_network, "_orig_mod"):
            self.model.context_network = torch.compile(self.model.context_network)

    # -- the objective ------------------------------------------------------------------------

    def temperature(self) -> float:
        """Gumbel temperature of the current update (from the global step)."""
        return self.cfg.quantizer.temperature_at(self.global_step)

    def _forward(self, batch: Batch, noise_seed: int | None) -> Wav2Vec2Output:
        noise = PerUtteranceNoise(batch.ids, noise_seed) if noise_seed is not None else None
        lengths = batch.lengths if bool((batch.lengths != batch.source.shape[1]).any()) else None
        return self.model(batch.source, lengths, temperature=self.temperature(), noise=noise)

    def _sum_over_ranks(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` summed over every DDP rank (a collective: every rank must call it)."""
        if self.trainer.world_size > 1:
            return self.trainer.strategy.reduce(t.clone(), reduce_op="sum")
        return t

    def _metrics(self, out: Wav2Vec2Output, batch: Batch) -> dict[str, torch.Tensor]:
        """Every logged quantity, computed once; losses per masked frame, in nats."""
        loss, ob = out.loss, self.cfg.objective
        m = loss.num_masked.float()
        valid = out.frame_lengths.sum().float()
        return {
            "loss": loss.total.detach() / m,
            "contrastive": loss.contrastive.detach() / m,
            "diversity": loss.diversity.detach(),
            "feature_penalty": loss.feature_penalty.detach(),
            "weighted_diversity": ob.diversity_weight * loss.diversity.detach(),
            "weighted_feature_penalty": ob.feature_penalty_weight * loss.feature_penalty.detach(),
            "accuracy": loss.accuracy,
            "code_perplexity": loss.code_perplexity,
            "prob_perplexity": loss.prob_perplexity,
            "masked_fraction": m / valid,
            "batch_audio_seconds": batch.lengths.sum().float() / self.sample_rate,
        }

    def training_step(self, batch: Batch, batch_idx: int) -> torch.Tensor | None:
        if len(batch) == 0:  # every file of the batch was a skipped bad file
            return None
        out = self._forward(batch, self.fixed_noise_seed)
        masked = self._sum_over_ranks(out.loss.num_masked.float())
        loss = out.loss.total * self.trainer.world_size / masked

        metrics = {f"train/{k}": v for k, v in self._metrics(out, batch).items()}
        metrics["train/temperature"] = out.loss.temperature
        metrics["train/lr"] = torch.tensor(self.trainer.optimizers[0].param_groups[0]["lr"])
        now = time.perf_counter()
        if self._last_batch_end is not None:
            seconds = metrics["train/batch_audio_seconds"] * self.trainer.world_size
            metrics["train/audio_seconds_per_second"] = seconds / (now - self._last_batch_end)
        self._last_batch_end = now
        B = len(batch)
        prog = {
            "train/loss",
            "train/accuracy",
            "train/code_perplexity",
            "train/audio_seconds_per_second",
        }
        for k, v in metrics.items():
            self.log(k, v.float(), batch_size=B, prog_bar=k in prog, sync_dist=False)

        G, V = self.cfg.quantizer.num_groups, self.cfg.quantizer.num_vars
        flat = (out.codes.reshape(-1, G) + torch.arange(G, device=out.codes.device) * V).flatten()
        self.code_counts += torch.bincount(flat, minlength=G * V).view(G, V).float()
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Batch, batch_idx: int) -> None:
        every = self.codebook_image_every
        step = self.global_step
        if every and step % every == 0 and step > 0:
            self._log_codebook_usage()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        grads = [p.grad for p in self.parameters() if p.grad is not None]
        if grads:
            norm = torch.nn.utils.get_total_norm(grads)
            self.log("train/grad_norm", norm, batch_size=1)

    def validation_step(self, batch: Batch, batch_idx: int) -> None:
        if len(batch) == 0:
            return
        out = self._forward(batch, self.val_noise_seed)
        for k, v in self._metrics(out, batch).items():
            self.log(
                f"val/{k}",
                v.float(),
                batch_size=len(batch),
                sync_dist=True,
                prog_bar=k in ("loss", "accuracy"),
            )

    # -- monitoring ---------------------------------------------------------------------------

    def _log_codebook_usage(self) -> None:
        """A picture of how often each codebook entry was chosen since the last picture."""
        counts = self._sum_over_ranks(self.code_counts.clone())
        self.code_counts.zero_()
        experiment = getattr(self.logger, "experiment", None)
        if self.trainer.is_global_zero and hasattr(experiment, "add_figure"):
            fig = codebook_usage_figure(counts.cpu().numpy(), self.global_step)
            experiment.add_figure("train/codebook_usage", fig, global_step=self.global_step)

    # -- optimisation -------------------------------------------------------------------------

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is None:
            raise ValueError("no optimizer configured")
        optimizer = self.optimizer_factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    # -- exact resume: random state travels with the checkpoint -------------------------------

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
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

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # applied when training starts, after everything else that set up the run drew numbers
        self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        state, self._rng_to_restore = self._rng_to_restore, None
        if state:
            torch.set_rng_state(state["torch"])
            name, keys, pos, has_gauss, gauss = state["numpy"]
            np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
            version, internal, gauss_next = state["python"]
            random.setstate((version, tuple(internal), gauss_next))
            if "cuda" in state and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(state["cuda"])


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
