"""Typed root of the composed configuration (what ``w2v2-pretrain`` runs).

Registered as the schema of ``train.yaml`` (`w2v2_pretrain.configs.register_configs`), so
Hydra refuses an unknown root key or a value of the wrong type at composition. The groups that
hold Lightning, optimizer and logger settings (``trainer``, ``optim``, ``callbacks``,
``logger``, ``paths``) are their libraries' arguments, instantiated as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from w2v2_pretrain.checkpoint import InitTemperature
from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.probes.run import ProbeConfig
from w2v2_pretrain.training.health import HealthConfig


@dataclass(kw_only=True)
class ProbeSettings(ProbeConfig):
    """The ``probe`` node: when rounds run (training/probe_callback.py) and what they probe."""

    every_n_updates: int = 0
    """Updates between probe rounds (0: off)."""
    at_start: bool = True
    """Also a round at update 0 (the initialisation)."""
    manifest_dir: Any = None
    """The probe set's manifest folder (valid.tsv first, then a slice of train.tsv); None: the
    run's first."""


@dataclass(kw_only=True)
class RunConfig:
    """A pretraining run: the model, its data, the optimisation, and how the run goes."""

    model: Wav2Vec2Config = field(default_factory=Wav2Vec2Config)
    data: DataConfig = field(default_factory=DataConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    probe: ProbeSettings = field(default_factory=ProbeSettings)
    optim: Any = None
    """``optimizer`` and ``scheduler``: partial callables (Hydra ``_partial_``)."""
    trainer: Any = None
    """``pytorch_lightning.Trainer`` arguments."""
    callbacks: Any = None
    """Lightning callbacks by name (``callbacks.periodic.every_n_train_steps=...``)."""
    logger: Any = None
    """The Lightning logger (TensorBoard), or null."""
    paths: Any = None
    """``root_dir``, ``output_dir`` (the run folder) and ``checkpoint_dir``."""

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
