"""``train(cfg)``: build everything from a composed Hydra config and run pretraining."""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from omegaconf import DictConfig, OmegaConf

from w2v2_pretrain.errors import ConfigError, W2V2Error

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the run wrote its outputs, and its final validation metrics."""

    output_dir: Path
    checkpoint_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    global_step: int
    val_metrics: dict[str, float] = field(default_factory=dict)


def register_configs() -> None:
    """Model presets as structured configs: ``model=tiny|base|large`` in the ``model`` group,
    typed and validated by OmegaConf, with the Python presets as the single source of truth."""
    from hydra.core.config_store import ConfigStore

    from w2v2_pretrain.models.config import PRESETS
    from w2v2_pretrain.paths import REPO_ROOT

    OmegaConf.register_new_resolver("w2v2_root", lambda: str(REPO_ROOT), replace=True)
    cs = ConfigStore.instance()
    for name, make in PRESETS.items():
        cs.store(group="model", name=name, node=make())


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path`` if given; with ``resume=true`` the run folder's ``last.ckpt`` if present."""
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path: {path} does not exist")
        return str(path)
    if cfg.get("resume"):
        last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
        if last.is_file():
            return str(last)
        log.info("resume=true but %s does not exist yet: starting a new run", last)
    return None


def build(cfg: DictConfig) -> tuple[Any, Any, pl.Trainer]:
    """The data module, the LightningModule and the Trainer (errors are ConfigError)."""
    from w2v2_pretrain.training.module import Wav2Vec2Pretraining

    if OmegaConf.is_missing(cfg.data, "manifest_dir"):
        raise ConfigError(
            "data.manifest_dir is required: a folder with train.tsv and valid.tsv "
            "(make them with `w2v2-manifest AUDIO_ROOT --dest DIR`)"
        )
    model_cfg = OmegaConf.to_container(cfg.model, resolve=True)
    overfit = bool(cfg.trainer.get("overfit_batches", 0))
    fixed_noise = cfg.get("fixed_noise_seed")
    if overfit and fixed_noise is None:
        # one batch must truly repeat: same crops, masks, distractors and Gumbel noise
        fixed_noise = cfg.seed
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        module = Wav2Vec2Pretraining(
            model=model_cfg,
            optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
            scheduler=hydra.utils.instantiate(cfg.optim.scheduler),
            sample_rate=cfg.data.sample_rate,
            fixed_noise_seed=fixed_noise,
            val_noise_seed=cfg.val_noise_seed,
            codebook_image_every=cfg.codebook_image_every,
            compile=cfg.compile,
        )
        callbacks = [
            hydra.utils.instantiate(c)
            for name, c in (cfg.get("callbacks") or {}).items()
            # Lightning refuses a progress-bar callback when the bar is switched off
            if name != "progress" or cfg.trainer.get("enable_progress_bar", True)
        ]
        logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
        trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=logger)
    except W2V2Error:
        raise
    except Exception as e:  # instantiate wraps the cause; show the innermost message
        cause = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, W2V2Error):
            raise cause from None
        raise ConfigError(
            f"invalid configuration: {type(cause).__name__}: "
            f"{str(cause).strip().splitlines()[0] if str(cause) else ''}"
        ) from e
    datamodule.receptive_field = module.cfg.receptive_field
    datamodule.fixed_order = overfit
    return datamodule, module, trainer


def train(cfg: DictConfig) -> TrainResult:
    """Pretrain as configured; return where outputs went and the final validation metrics."""
    # our batch sampler resumes mid-epoch from the loop's progress (AudioDataModule._loader),
    # so Lightning's generic warning about non-resumable loaders does not apply
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    ckpt_path = find_resume_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg)
    if trainer.logger:
        trainer.logger.log_hyperparams(
            {"config": OmegaConf.to_yaml(cfg, resolve=True)}
            | _flat(OmegaConf.to_container(cfg, resolve=True))
        )
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    val = trainer.validate(module, datamodule=datamodule, verbose=False)
    metrics = {k: float(v) for k, v in (val[0] if val else {}).items()}
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path:
            best = Path(cb.best_model_path)
    last = ckpt_dir / "last.ckpt"
    return TrainResult(
        output_dir=Path(cfg.paths.output_dir),
        checkpoint_dir=ckpt_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best,
        global_step=trainer.global_step,
        val_metrics=metrics,
    )


def _flat(d: dict, prefix: str = "") -> dict[str, Any]:
    """Nested config as flat ``a/b/c`` scalars (what TensorBoard's hparams table shows)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out |= _flat(v, key + "/")
        elif isinstance(v, (int, float, str, bool)) and not (
            isinstance(v, float) and math.isnan(v)
        ):
            out[key] = v
        elif v is None:
            out[key] = "null"
        else:
            out[key] = str(v)
    return out
