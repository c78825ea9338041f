"""Typed root of the composed configuration (what ``w2v2-pretrain`` runs).

Registered as the schema of ``train.yaml`` (`w2v2_pretrain.configs.register_configs`), so
Hydra refuses an unknown key or a value of the wrong type at composition; `RunConfig.validate`
checks what types cannot (ranges, settings that must agree), naming the field. The groups that
hold Lightning, optimizer and logger settings (``trainer``, ``optim``, ``callbacks``,
``logger``) are their libraries' arguments, instantiated as they are.

Torch-free and Lightning-free: composing a config imports neither.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hydra.core.hydra_config import HydraConfig
from omegaconf import MISSING, DictConfig, OmegaConf

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.probes.config import ProbeConfig


class InitTemperature(Choice):
    """Where the Gumbel temperature of a run started from a source's weights begins
    (``init_temperature``)."""

    end = "end"
    """Where the source's schedule left it: its floor, or where ``num_updates`` took it."""
    restart = "restart"
    """The schedule's start, as a fresh run."""


@dataclass(kw_only=True)
class HealthConfig:
    """Thresholds of the run-health warnings (config node ``health``; training/health.py)."""

    plateau_margin: float = 0.05
    """Nats: a validation contrastive loss within this of chance ln(K+1) counts as 'at chance'."""
    plateau_updates: int = 5000
    """Updates after warm-up that validation may stay at chance before the plateau warning."""
    collapse_fraction: float = 0.1
    """Code perplexity below this fraction of G x V counts as codebook collapse."""
    trivial_accuracy: float = 0.99
    """Accuracy at or above this ..."""
    trivial_loss: float = 0.05
    """... with the contrastive loss (nats per masked frame) at or below this: trivial solution."""
    grad_spike_factor: float = 10.0
    """A gradient norm above this many times the median of recent updates is a spike."""
    grad_window: int = 100
    """Recent updates whose gradient norms make that median (the first 20 only gather)."""


@dataclass(kw_only=True)
class ProbeSettings(ProbeConfig):
    """The ``probe`` node: when rounds run (training/probe_callback.py) and what they probe."""

    every_n_updates: int = 0
    """Updates between probe rounds (0: off)."""
    at_start: bool = True
    """Also a round at update 0 (the initialisation)."""
    manifest_dir: Any = None
    """The probe set's manifest folder (valid.tsv first, then a slice of train.tsv), or a list
    of folders (the first is probed); None: none given."""

    @property
    def manifest_folder(self) -> str | None:
        """The one manifest folder the probe set is drawn from."""
        if isinstance(self.manifest_dir, list | tuple):
            return str(self.manifest_dir[0]) if self.manifest_dir else None
        return None if self.manifest_dir is None else str(self.manifest_dir)

    def validate(self, where: str = "probe") -> ProbeSettings:
        if self.every_n_updates < 0:
            raise ConfigError(
                f"{where}.every_n_updates={self.every_n_updates}: expected an integer >= 0 "
                "(0: off)"
            )
        super().validate(where)
        return self


@dataclass(kw_only=True)
class PathsConfig:
    """Where a run reads and writes (config node ``paths``; configs/paths/default.yaml)."""

    root_dir: str = MISSING
    """The source checkout (``$W2V2_ROOT`` if set): where the demo corpus is."""
    output_dir: str = MISSING
    """The run folder (Hydra's ``hydra.run.dir``)."""
    checkpoint_dir: str = MISSING
    """Checkpoints: ``<output_dir>/checkpoints``."""


@dataclass(kw_only=True)
class RunConfig:
    """A pretraining run: the model, its data, the optimisation, and how the run goes."""

    model: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    data: DataConfig = field(default_factory=DataConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    paths: PathsConfig = field(default_factory=PathsConfig)
    optim: Any = None
    """``optimizer`` and ``scheduler``: partial callables (Hydra ``_partial_``)."""
    trainer: Any = None
    """``pytorch_lightning.Trainer`` arguments."""
    callbacks: Any = None
    """Lightning callbacks by name (``callbacks.periodic.every_n_train_steps=...``)."""
    logger: Any = None
    """The Lightning logger (TensorBoard), or null."""

    seed: int = 1
    """Model initialisation, batch order, crops, masks, distractors and Gumbel noise."""
    ckpt_path: str | None = None
    """Continue from this training checkpoint."""
    resume: bool = False
    """Continue from the run folder's newest checkpoint (a fresh run when it holds none)."""
    init_from: str | None = None
    """Start from released weights: a transformers folder, a fairseq checkpoint or ours, with a
    fresh optimizer, schedule and step."""
    init_temperature: InitTemperature = InitTemperature.end
    """With ``init_from``: ``end`` or ``restart`` the Gumbel schedule."""
    fixed_noise_seed: int | None = None
    """Masks, distractors and Gumbel noise per utterance from (this, utterance), every epoch
    alike: batches repeat exactly (overfitting one batch; comparing device layouts)."""
    val_noise_seed: int = 12345
    """Validation masks per utterance: validations compare across updates."""
    codebook_image_every: int = 500
    """Updates between pictures of codebook usage in TensorBoard (0: never)."""
    compile: bool = False
    """``torch.compile`` the context network."""
    max_bad_updates: int = 5
    """Updates in a row skipped for a non-finite loss or gradient before the run stops."""

    def validate(self) -> RunConfig:
        """Raise a one-line `ConfigError` naming the first bad root field (the model and data
        nodes validate themselves when the run is built); return self."""
        for name in ("seed", "val_noise_seed", "fixed_noise_seed"):
            value = getattr(self, name)
            if value is not None and not 0 <= value < 2**32:
                raise ConfigError(f"{name}: must be in [0, 2**32), got {value}")
        if self.max_bad_updates < 1:
            raise ConfigError(
                f"max_bad_updates: must be at least 1, got {self.max_bad_updates} (updates in "
                "a row skipped for non-finite values before the run stops; a large number in "
                "practice never stops it)"
            )
        if not self.init_from and hydra_choice("experiment") == "continue_pretraining":
            raise ConfigError(
                "init_from is required by experiment=continue_pretraining: a transformers "
                "Wav2Vec2ForPreTraining folder, a fairseq checkpoint or one of ours"
            )
        self.probe.validate()
        return self


def run_config(cfg: DictConfig) -> RunConfig:
    """The composed config as a validated `RunConfig` (interpolations resolved), once the
    settings that must be given are there."""
    if OmegaConf.is_missing(cfg.data, "manifest_dir"):
        raise ConfigError(
            "data.manifest_dir is required: a folder with train.tsv and valid.tsv "
            "(make them with `w2v2-manifest AUDIO_ROOT --dest DIR`)"
        )
    run = OmegaConf.to_object(cfg)
    if not isinstance(run, RunConfig):
        raise TypeError("the config was not composed onto run_schema (configs/train.yaml)")
    return run.validate()


def hydra_choice(group: str) -> str | None:
    """The option of ``group`` this run chose (None outside Hydra's runtime)."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None
