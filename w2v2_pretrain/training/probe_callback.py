"""Representation probes while pretraining: every ``probe.every_n_updates`` updates, rank 0
probes the model's frozen layers on a fixed probe set and logs ``probe/<probe>_layer<L>`` and a
picture per layer to TensorBoard; the end-of-run summary prints the latest round.

DDP: the round runs on rank 0 right after an update's optimizer step, and every rank then
meets at a barrier, so no collective is pending while rank 0 probes; the other ranks wait
there for the round (its cost: `ProbeReport.seconds`, logged as ``probe/seconds``).
"""

from __future__ import annotations

import logging
from typing import Any

import pytorch_lightning as pl
from typing_extensions import override

from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.figures import layer_figure
from w2v2_pretrain.probes.probe_set import build_probe_set, load_probe_audio
from w2v2_pretrain.probes.run import PROBES, ProbeReport, run_probes
from w2v2_pretrain.training.config import ProbeSettings

log = logging.getLogger(__name__)


class ProbeCallback(pl.Callback):
    """Probe rounds at update 0 (``at_start``) and every ``every_n_updates`` (0: never).

    Args:
        settings: the ``probe`` node as composed and validated (`ProbeSettings`): the cadence,
            the probe set's manifest folder and what the rounds probe.
    """

    def __init__(self, settings: ProbeSettings) -> None:
        super().__init__()
        self.settings = settings
        self.reports: list[tuple[int, ProbeReport]] = []
        """(update, report) of every round this process ran, oldest first."""
        self._probe_set = None
        self._audio = None
        self._last_step: int | None = None

    @property
    def enabled(self) -> bool:
        return self.settings.every_n_updates > 0

    @property
    def latest(self) -> tuple[int, ProbeReport] | None:
        return self.reports[-1] if self.reports else None

    # -- hooks ------------------------------------------------------------------------------

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if not self.enabled or not trainer.is_global_zero or self._probe_set is not None:
            return
        folder, cfg = self.settings.manifest_folder, self.settings
        if folder is None:
            raise ConfigError("probe.manifest_dir: not set (a folder with valid.tsv/train.tsv)")
        self._probe_set = build_probe_set(
            folder,
            max_seconds=cfg.max_seconds,
            held_out_fraction=cfg.held_out_fraction,
            seed=cfg.seed,
        )
        cfg.check_layers(pl_module.model.cfg.context_network.num_layers)
        log.info("%s; probing every %d updates", self._probe_set.describe(), cfg.every_n_updates)
        for probe, why in self._probe_set.skipped.items():
            log.info("probe %s skipped: %s", probe, why)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.enabled and self.settings.at_start and trainer.global_step == 0:
            self._round(trainer, pl_module)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any, **kwargs: Any
    ) -> None:
        step = trainer.global_step
        every = self.settings.every_n_updates
        if not self.enabled or step == 0 or step % every or step == self._last_step:
            return  # called per micro-batch: a round once, after the update's optimizer step
        self._round(trainer, pl_module)

    # -- the round --------------------------------------------------------------------------

    def _round(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        step = trainer.global_step
        self._last_step = step
        if trainer.is_global_zero:
            report = self.probe(pl_module.model, name=f"update {step}")
            self.reports.append((step, report))
            self._log(trainer, step, report)
        if trainer.world_size > 1:
            trainer.strategy.barrier("probe_round")

    def probe(self, model: Any, name: str = "model") -> ProbeReport:
        """One round on ``model`` (a `Wav2Vec2Model`; left in the mode it was in)."""
        if self._audio is None:
            contract = model.cfg.input
            self._probe_set, self._audio = load_probe_audio(
                self._probe_set, contract.sample_rate, contract.normalize
            )
        return run_probes(model, self._probe_set, self._audio, self.settings, name)

    def _log(self, trainer: pl.Trainer, step: int, report: ProbeReport) -> None:
        log.info(
            "probes at update %d (%.1f s, features %.1f s): %s",
            step,
            report.seconds,
            report.feature_seconds,
            "; ".join(summary_parts(report)),
        )
        if not trainer.logger:
            return
        metrics = {f"probe/{r.probe}_layer{r.layer}": r.value for r in report.records}
        metrics["probe/seconds"] = report.seconds
        if "speaker_acc" in report.chance:
            metrics["probe/speaker_acc_chance"] = report.chance["speaker_acc"]
        trainer.logger.log_metrics(metrics, step=step)
        experiment = getattr(trainer.logger, "experiment", None)
        if hasattr(experiment, "add_figure"):
            experiment.add_figure("probe/layers", layer_figure(report, step), global_step=step)


def summary_parts(report: ProbeReport) -> list[str]:
    """``cer 0.71 0.70 ... (layers 0-4)`` per probe that ran."""
    layers = report.layers()
    parts = []
    for probe in PROBES[:3]:
        values = [report.value(probe, layer) for layer in layers]
        if all(v is not None for v in values):
            digits = "{:.1f}" if probe == "rankme" else "{:.3f}"
            parts.append(f"{probe} " + " ".join(digits.format(v) for v in values))
    return [*parts, f"(layers {', '.join(map(str, layers))})"]


def probe_summary_lines(callbacks: list[pl.Callback]) -> list[str]:
    """The end-of-run summary's lines for the latest probe round (none if no round ran):
    what `cli.pretrain.summary` prints from ``TrainResult.probe_lines``."""
    found = [c for c in callbacks if isinstance(c, ProbeCallback) and c.latest is not None]
    if not found:
        return []
    step, report = found[0].latest
    lines = [f"update {step}: " + "; ".join(summary_parts(report))]
    for probe in ("cer", "speaker_acc"):
        r = report.best(probe)
        if r is not None:
            chance = report.chance.get(probe)
            extra = f" (chance {chance:.3f})" if chance is not None else ""
            lines.append(f"best {probe}: {r.value:.3f} at layer {r.layer}{extra}")
    lines += [f"skipped {p}: {why}" for p, why in report.skipped.items()]
    return lines
