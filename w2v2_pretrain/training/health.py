"""Run health: early warnings for the failures users of wav2vec 2.0 pretraining report most.

`RunHealth` reads the metrics of logged updates and validations and says, once per episode,
when a run is stuck on the early plateau (contrastive loss at chance, fairseq's "6.658 bits"),
when the codebooks collapse, when the objective has found a trivial solution, and when the
gradient norm spikes or turns non-finite; each warning says what to try. The thresholds are
the config node ``health``. `RunHealthMonitor` feeds it from Lightning and writes each
warning to the log and to TensorBoard (text under ``health/``).
"""

from __future__ import annotations

import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

import pytorch_lightning as pl
from typing_extensions import override

from w2v2_pretrain.training.config import HealthConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthWarning:
    """One warning: its kind (``plateau``, ``collapse``, ``trivial``, ``grad_spike``,
    ``nonfinite``), the update it was raised at, and the message with what to try."""

    kind: str
    step: int
    message: str


def chance_loss(num_distractors: int) -> float:
    """Contrastive loss at chance, ln(K+1) nats: uniform over the positive and K distractors."""
    return math.log(num_distractors + 1)


@dataclass
class RunHealth:
    """Turns metrics into warnings; each kind warns once until the condition clears.

    Args:
        config: the thresholds.
        num_distractors: K (within + cross-sample distractors).
        num_codevectors: G x V.
        warmup_updates: the learning-rate warm-up; the plateau is counted only after it.
    """

    config: HealthConfig
    num_distractors: int
    num_codevectors: int
    warmup_updates: int = 0
    active: set[str] = field(default_factory=set)
    _plateau_since: int | None = None
    _grad_norms: deque = field(default_factory=deque)

    @property
    def chance(self) -> float:
        return chance_loss(self.num_distractors)

    def _once(self, kind: str, condition: bool, step: int, message: str) -> list[HealthWarning]:
        if not condition:
            self.active.discard(kind)
            return []
        if kind in self.active:
            return []
        self.active.add(kind)
        return [HealthWarning(kind, step, message)]

    def on_train_metrics(
        self,
        step: int,
        *,
        contrastive: float,
        accuracy: float,
        code_perplexity: float,
        prob_perplexity: float,
        grad_norm: float | None = None,
    ) -> list[HealthWarning]:
        """Check one logged training update (losses per masked frame, in nats)."""
        c, out = self.config, []
        gv = self.num_codevectors
        out += self._once(
            "collapse",
            code_perplexity < c.collapse_fraction * gv,
            step,
            f"codebook collapse at update {step}: code perplexity {code_perplexity:.1f} of "
            f"{gv} codevectors (softmax perplexity {prob_perplexity:.1f}), below "
            f"{c.collapse_fraction:g} x {gv}. With the layer-norm encoder, "
            "model.objective.feature_penalty_weight=0 (LARGE's value); otherwise a larger "
            "model.objective.diversity_weight, a lower learning rate or a longer warm-up; see "
            "README, 'Run health'.",
        )
        out += self._once(
            "trivial",
            accuracy >= c.trivial_accuracy and contrastive <= c.trivial_loss,
            step,
            f"trivial solution at update {step}: accuracy {accuracy:.3f} with contrastive loss "
            f"{contrastive:.3f} nats per masked frame. The targets have become (nearly) "
            "identical, so distractors equal to their positive are excluded and the task is "
            "empty (watch train/identical_distractors). Try what helps against codebook "
            "collapse: feature penalty 0 with the layer-norm encoder, a larger diversity "
            "weight, a lower learning rate.",
        )
        if grad_norm is not None:
            out += self._grad(step, grad_norm)
        return out

    def _grad(self, step: int, norm: float) -> list[HealthWarning]:
        c, out = self.config, []
        finite = math.isfinite(norm)
        out += self._once(
            "nonfinite",
            not finite,
            step,
            f"non-finite gradient norm at update {step}: the update was skipped (see "
            "train/skipped_updates). Repeated, it stops the run; try a lower learning rate, "
            "gradient clipping (trainer.gradient_clip_val), bf16 instead of 16-mixed, and "
            "check the data (data.verify=decode).",
        )
        if not finite:
            return out
        norms = self._grad_norms
        median = statistics.median(norms) if len(norms) >= 20 else None
        spike = median is not None and norm > c.grad_spike_factor * median
        out += self._once(
            "grad_spike",
            spike,
            step,
            f"gradient norm spike at update {step}: {norm:.3g}, {norm / (median or 1):.0f} x "
            f"the median of the last {len(norms)} logged updates ({median or 0:.3g}). "
            "Occasional spikes are normal early on; repeated ones precede divergence: try a "
            "lower learning rate, a longer warm-up or trainer.gradient_clip_val.",
        )
        norms.append(norm)
        while len(norms) > c.grad_window:
            norms.popleft()
        return out

    def on_validation(self, step: int, *, contrastive: float) -> list[HealthWarning]:
        """Check one validation (contrastive loss per masked frame, nats)."""
        c = self.config
        near = contrastive >= self.chance - c.plateau_margin  # not yet clearly below chance
        if not near:
            self._plateau_since = None
        elif self._plateau_since is None:
            self._plateau_since = max(step, self.warmup_updates)
        stuck = near and step - (self._plateau_since or step) >= c.plateau_updates
        bits = contrastive / math.log(2)
        return self._once(
            "plateau",
            stuck,
            step,
            f"early plateau: validation contrastive loss {contrastive:.3f} nats ({bits:.3f} "
            f"bits) has stayed within {c.plateau_margin:g} of chance ln({self.num_distractors}"
            f"+1) = {self.chance:.3f} ({self.chance / math.log(2):.3f} bits, fairseq's flat "
            f"line) since update {self._plateau_since}. Real runs leave it with enough audio "
            "per update (data.audio_per_update) and updates; small models on little data: "
            "fewer distractors (model.objective.num_negatives), shorter masks "
            "(model.masking.mask_length), dropout off, crops aligned to frames "
            "(data.crop_alignment=320); see README, 'Run health'.",
        )


class RunHealthMonitor(pl.Callback):
    """Feeds `RunHealth` at every logged update and every validation; warnings go to the log,
    to TensorBoard as text (``health/<kind>``) and to ``warnings`` for the end-of-run summary."""

    def __init__(self, health: RunHealth) -> None:
        self.health = health
        self.warnings: list[HealthWarning] = []
        self._last_step = -1

    def _emit(self, trainer: pl.Trainer, found: list[HealthWarning]) -> None:
        for w in found:
            self.warnings.append(w)
            if trainer.is_global_zero:
                log.warning("run health: %s", w.message)
                experiment = getattr(trainer.logger, "experiment", None)
                if hasattr(experiment, "add_text"):
                    experiment.add_text(f"health/{w.kind}", w.message, global_step=w.step)

    @override
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step  # updates completed
        if step == self._last_step or step % trainer.log_every_n_steps:
            return
        self._last_step = step
        m = trainer.callback_metrics
        needed = ("train/contrastive", "train/accuracy", "train/code_perplexity")
        if not all(k in m for k in needed):
            return
        grad = m.get("train/grad_norm")
        self._emit(
            trainer,
            self.health.on_train_metrics(
                step - 1,
                contrastive=float(m["train/contrastive"]),
                accuracy=float(m["train/accuracy"]),
                code_perplexity=float(m["train/code_perplexity"]),
                prob_perplexity=float(m.get("train/prob_perplexity", float("nan"))),
                grad_norm=float(grad) if grad is not None else None,
            ),
        )

    @override
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or "val/contrastive" not in trainer.callback_metrics:
            return
        contrastive = float(trainer.callback_metrics["val/contrastive"])
        self._emit(
            trainer, self.health.on_validation(trainer.global_step, contrastive=contrastive)
        )
