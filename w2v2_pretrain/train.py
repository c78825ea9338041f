"""``train(cfg)``: build everything from a composed Hydra config and run pretraining."""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
import torch
from omegaconf import DictConfig, OmegaConf

from w2v2_pretrain.errors import ConfigError, DataError, W2V2Error

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """Where the run wrote its outputs, its final validation metrics and how it went."""

    output_dir: Path
    checkpoint_dir: Path
    last_checkpoint: Path | None
    best_checkpoint: Path | None
    global_step: int
    val_metrics: dict[str, float] = field(default_factory=dict)
    chance: float = float("nan")
    """Contrastive loss at chance, ln(K+1) nats."""
    warnings: list[str] = field(default_factory=list)
    """Run-health warnings raised during the run."""
    stopped_by: str | None = None
    """``SIGTERM`` when a scheduler stopped the run (a checkpoint was written)."""


def register_configs() -> None:
    """Model presets as structured configs: ``model=tiny|base|large`` in the ``model`` group,
    typed and validated by OmegaConf, with the Python presets as the single source of truth;
    and the run-health thresholds as the typed node ``health``."""
    from hydra.core.config_store import ConfigStore

    from w2v2_pretrain.models.config import PRESETS
    from w2v2_pretrain.paths import REPO_ROOT
    from w2v2_pretrain.training.health import HealthConfig

    OmegaConf.register_new_resolver("w2v2_root", lambda: str(REPO_ROOT), replace=True)
    cs = ConfigStore.instance()
    for name, make in PRESETS.items():
        cs.store(group="model", name=name, node=make())
    cs.store(group="health", name="default", node=HealthConfig())


def _newest(paths: list[Path]) -> Path | None:
    found = [p for p in paths if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_resume_checkpoint(cfg: DictConfig) -> str | None:
    """``ckpt_path`` if given; with ``resume=true`` the newest of the run folder's
    ``checkpoints/last.ckpt`` and Lightning's SLURM requeue checkpoints (``hpc_ckpt_*.ckpt``),
    if any."""
    if cfg.get("ckpt_path") and cfg.get("resume"):
        raise ConfigError("ckpt_path and resume=true both given: use one")
    if cfg.get("ckpt_path"):
        path = Path(cfg.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path: {path} does not exist")
        return str(path)
    if cfg.get("resume"):
        run = Path(cfg.paths.output_dir)
        for stale in Path(cfg.paths.checkpoint_dir).glob(".*.ckpt.*.tmp"):
            stale.unlink(missing_ok=True)  # a save that a killed process never finished
        newest = _newest(
            [Path(cfg.paths.checkpoint_dir) / "last.ckpt", *run.glob("hpc_ckpt_*.ckpt")]
        )
        if newest is not None:
            return str(newest)
        log.info("resume=true but %s holds no checkpoint yet: starting a new run", run)
    return None


def check_resume_checkpoint(path: str, model: Any) -> None:
    """A one-line error unless ``path`` is a readable training checkpoint whose weights fit
    ``model``; model settings that differ without changing the weights are listed."""
    from w2v2_pretrain.checkpoint import check_weights_fit, config_differences, load_file
    from w2v2_pretrain.models import Wav2Vec2Config

    obj = load_file(path, "checkpoint")
    hparams = obj.get("hyper_parameters") or {}
    if "state_dict" not in obj or "model" not in hparams or "loops" not in obj:
        raise DataError(f"{path}: not a w2v2-pretrain training checkpoint")
    try:
        saved = Wav2Vec2Config.from_dict(dict(hparams["model"]))
    except ConfigError as e:
        raise DataError(f"{path}: {e}") from None
    changed = config_differences(saved, model)
    state = {k[len("model.") :]: v for k, v in obj["state_dict"].items() if k.startswith("model.")}
    try:
        check_weights_fit(model, {k.replace("_orig_mod.", ""): v for k, v in state.items()}, path)
    except DataError:
        raise DataError(
            f"{path}: trained with other model settings ({'; '.join(changed[:4])}); resume "
            "with the run's own model config"
        ) from None
    if changed:
        log.warning("resuming %s with changed model settings: %s", path, "; ".join(changed))


def _experiment() -> str | None:
    """The ``experiment=`` chosen on the command line (None outside Hydra's runtime)."""
    from hydra.core.hydra_config import HydraConfig

    try:
        return HydraConfig.get().runtime.choices.get("experiment")
    except ValueError:
        return None


def fields_set_by_run(cfg: DictConfig) -> set[str]:
    """Model fields this run sets itself: overridden on the command line, or departing from
    the chosen preset (``model=...``) in an experiment file."""
    from hydra.core.hydra_config import HydraConfig

    from w2v2_pretrain.models import Wav2Vec2Config
    from w2v2_pretrain.models.config import preset

    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:  # composed without Hydra's runtime: nothing known to be set
        return set()
    changed = set()
    for override in hydra_cfg.overrides.task:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("model."):
            changed.add(key[len("model.") :])
    run = Wav2Vec2Config.from_dict(OmegaConf.to_container(cfg.model, enum_to_str=True)).flat()
    name = hydra_cfg.runtime.choices.get("model")
    if name:
        base = preset(name).flat()
        changed |= {k for k, v in run.items() if base.get(k) != v}
    # a field the command line named covers the fields under it (model.masking=...)
    return {k for k in run if k in changed or any(k.startswith(c + ".") for c in changed)}


def model_config(cfg: DictConfig, resume_from: str | None) -> tuple[dict[str, Any], Any]:
    """The run's model config, and the source whose weights it starts from (or None).

    As composed, or, with ``init_from``, the source's architecture with the run's settings
    (`config_for_init`); a resumed such run takes its own checkpoint as the source (the weights
    then come with the resume), so a requeue needs neither the original source nor its
    download."""
    from w2v2_pretrain.checkpoint import config_for_init, read_model_source
    from w2v2_pretrain.models import Wav2Vec2Config

    composed = OmegaConf.to_container(cfg.model, resolve=True, enum_to_str=True)
    if not cfg.get("init_from"):
        return composed, None
    source = read_model_source(resume_from or cfg.init_from)
    run = Wav2Vec2Config.from_dict(composed)
    temperature = "restart" if resume_from else cfg.get("init_temperature", "end")
    merged = config_for_init(source, run, fields_set_by_run(cfg), temperature)
    if resume_from:
        merged.quantizer.temperature = source.config.quantizer.temperature
        return merged.to_dict(), None
    return merged.to_dict(), source


def check_combinations(model: Any, datamodule: Any) -> None:
    """Settings that are valid one by one but not together (one-line `ConfigError`)."""
    from w2v2_pretrain.data.dataset import CollateMode
    from w2v2_pretrain.models.config import FeatureEncoderMode
    from w2v2_pretrain.models.feature_encoder import frame_lengths

    def frames(samples: int) -> int:
        return int(frame_lengths(torch.tensor([samples]), model.feature_encoder.conv_layers)[0])

    for name in ("sample_rate", "normalize"):
        if getattr(datamodule, name) != getattr(model.input, name):
            raise ConfigError(
                f"data.{name}={getattr(datamodule, name)} but model.input.{name}="
                f"{getattr(model.input, name)}: set model.input.{name} (the data follows it, "
                "and it is recorded with the model so extraction applies it)"
            )
    mk, ob = model.masking, model.objective
    longest = frames(datamodule.max_sample_size)
    shortest = frames(max(datamodule.min_sample_size, model.receptive_field))
    if mk.mask_length >= longest:
        raise ConfigError(
            f"model.masking.mask_length ({mk.mask_length} frames) is not shorter than the "
            f"longest clip (data.max_sample_size={datamodule.max_sample_size} samples = "
            f"{longest} frames)"
        )
    if ob.num_negatives:
        most = expected_masked(model, longest) - 1
        if ob.num_negatives > most:
            raise ConfigError(
                f"model.objective.num_negatives ({ob.num_negatives}) exceeds the other masked "
                f"frames a clip can supply (about {most} at data.max_sample_size="
                f"{datamodule.max_sample_size}): lower it, or raise data.max_sample_size"
            )
        fewest = expected_masked(model, shortest) - 1
        if ob.num_negatives > fewest:
            log.warning(
                "model.objective.num_negatives=%d: batches of the shortest clips (%d frames) "
                "mask about %d other frames, so their distractors repeat (as in fairseq's BASE "
                "recipe)",
                ob.num_negatives,
                shortest,
                fewest,
            )
    if model.feature_encoder.mode == FeatureEncoderMode.layer_norm and ob.feature_penalty_weight:
        log.warning(
            "model.feature_encoder.mode=layer_norm with model.objective.feature_penalty_weight="
            "%g: the penalty can make the features the same at every frame and collapse the "
            "codebooks (the demo does within 20 updates); LARGE uses 0. See README, 'Run health'",
            ob.feature_penalty_weight,
        )
    if (
        datamodule.collate_mode == CollateMode.pad
        and model.feature_encoder.mode == FeatureEncoderMode.group_norm
    ):
        raise ConfigError(
            "data.collate=pad with model.feature_encoder.mode=group_norm: group norm's "
            "statistics include the padding, so padded clips get other features; use "
            "data.collate=crop (fairseq's default) or the layer_norm encoder"
        )


def expected_masked(model: Any, num_frames: int, draws: int = 32) -> int:
    """Masked frames of a clip of ``num_frames`` frames under the model's masking, averaged
    over a few seeded draws."""
    from w2v2_pretrain.models.masking import compute_span_mask
    from w2v2_pretrain.models.noise import Noise

    mk = model.masking
    lengths = torch.full((draws,), num_frames)
    noise = Noise(torch.Generator().manual_seed(0))
    mask = compute_span_mask(
        lengths,
        num_frames,
        mk.mask_prob,
        mk.mask_length,
        mk.min_masks,
        noise,
        require_same_masks=False,
    )
    return int(mask.sum(1).float().mean())


def accumulation_for(datamodule: Any, trainer: pl.Trainer, requested: int) -> tuple[int, str]:
    """Gradient accumulation from ``data.audio_per_update`` (or as requested), and the line
    that says how much audio an update holds."""
    world, budget, rate = trainer.world_size, datamodule.max_tokens, datamodule.sample_rate
    per_pass = world * budget / rate  # seconds, at most, of one micro-batch on every device
    accumulate = requested
    if datamodule.audio_per_update is not None:
        derived = max(1, round(datamodule.audio_per_update / per_pass))
        if requested not in (1, derived):
            raise ConfigError(
                f"trainer.accumulate_grad_batches={requested} and data.audio_per_update="
                f"{datamodule.audio_per_update:g}s (= {derived} here) disagree: set one"
            )
        accumulate = derived
    seconds = per_pass * accumulate
    line = (
        f"audio per update: {trainer.num_nodes} node(s) x {trainer.num_devices} device(s) x "
        f"accumulation {accumulate} x {budget:,} samples = up to {seconds / 3600:.2f} h "
        f"({seconds:,.0f} s)"
    )
    if datamodule.audio_per_update is not None:
        line += f"; asked for {datamodule.audio_per_update / 3600:.2f} h"
    return accumulate, line


def build(cfg: DictConfig, resume_from: str | None = None) -> tuple[Any, Any, pl.Trainer]:
    """The data module, the LightningModule and the Trainer (errors are ConfigError).

    ``resume_from``: the checkpoint the run continues from (None: a new run); with
    ``init_from`` and no resume, the model starts from the source's weights.
    """
    from w2v2_pretrain.training.callbacks import AtomicCheckpointIO
    from w2v2_pretrain.training.health import HealthConfig, RunHealth, RunHealthMonitor
    from w2v2_pretrain.training.module import Wav2Vec2Pretraining
    from w2v2_pretrain.training.schedules import warmup_updates

    if OmegaConf.is_missing(cfg.data, "manifest_dir"):
        raise ConfigError(
            "data.manifest_dir is required: a folder with train.tsv and valid.tsv "
            "(make them with `w2v2-manifest AUDIO_ROOT --dest DIR`)"
        )
    if not cfg.get("init_from") and _experiment() == "continue_pretraining":
        raise ConfigError(
            "init_from is required by experiment=continue_pretraining: a transformers "
            "Wav2Vec2ForPreTraining folder, a fairseq checkpoint or one of ours"
        )
    model_cfg, source = model_config(cfg, resume_from)
    overfit = bool(cfg.trainer.get("overfit_batches", 0))
    fixed_noise = cfg.get("fixed_noise_seed")
    if overfit and fixed_noise is None:
        # one batch must truly repeat: same crops, masks, distractors and Gumbel noise
        fixed_noise = cfg.seed
    output_dir = Path(cfg.paths.output_dir)
    try:
        datamodule = hydra.utils.instantiate(cfg.data)
        module = Wav2Vec2Pretraining(
            model=model_cfg,
            optimizer=hydra.utils.instantiate(cfg.optim.optimizer),
            scheduler=hydra.utils.instantiate(cfg.optim.scheduler),
            sample_rate=cfg.data.sample_rate,
            fixed_noise_seed=fixed_noise,
            codebook_image_every=cfg.codebook_image_every,
            compile=cfg.compile,
            max_bad_updates=cfg.max_bad_updates,
            on_bad_file=datamodule.on_bad_file,
            bad_files_log=str(output_dir / "bad_files.tsv"),
        )
        check_combinations(module.cfg, datamodule)
        callbacks = [
            hydra.utils.instantiate(c)
            for name, c in (cfg.get("callbacks") or {}).items()
            # Lightning refuses a progress-bar callback when the bar is switched off
            if name != "progress" or cfg.trainer.get("enable_progress_bar", True)
        ]
        ob, q = module.cfg.objective, module.cfg.quantizer
        health = RunHealth(
            config=HealthConfig(**OmegaConf.to_container(cfg.health)),
            num_distractors=ob.num_negatives + ob.cross_sample_negatives,
            num_codevectors=q.num_groups * q.num_vars,
            warmup_updates=warmup_updates(cfg.optim.scheduler.warmup, cfg.trainer.max_steps),
        )
        callbacks.append(RunHealthMonitor(health))
        logger = hydra.utils.instantiate(cfg.logger) if cfg.get("logger") else False
        trainer = hydra.utils.instantiate(
            cfg.trainer, callbacks=callbacks, logger=logger, plugins=[AtomicCheckpointIO()]
        )
        trainer.accumulate_grad_batches, audio_line = accumulation_for(
            datamodule, trainer, cfg.trainer.accumulate_grad_batches
        )
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
    datamodule.plan_masks_for(
        module.cfg,
        train_seed=cfg.seed if fixed_noise is None else fixed_noise,
        fixed=fixed_noise is not None,
        val_seed=cfg.val_noise_seed,
    )
    datamodule.fixed_order = overfit
    datamodule.bad_files_log = output_dir / "bad_files.tsv"
    if source is not None:
        module.model.load_state_dict(source.state_dict, strict=True)
        log.info(
            "starting from the %s weights of %s (fresh optimizer, schedule and step)",
            source.kind,
            cfg.init_from,
        )
    module.audio_per_update_line = audio_line
    return datamodule, module, trainer


def train(cfg: DictConfig) -> TrainResult:
    """Pretrain as configured; return where outputs went and the final validation metrics."""
    from pytorch_lightning.utilities.exceptions import SIGTERMException

    from w2v2_pretrain.training.health import RunHealthMonitor, chance_loss

    # our batch sampler resumes mid-epoch from the loop's progress (AudioDataModule._loader),
    # so Lightning's generic warning about non-resumable loaders does not apply
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    ckpt_path = find_resume_checkpoint(cfg)
    pl.seed_everything(cfg.seed, workers=True)
    datamodule, module, trainer = build(cfg, ckpt_path)
    if ckpt_path:
        check_resume_checkpoint(ckpt_path, module.cfg)
    if trainer.is_global_zero:
        log.info(module.audio_per_update_line)
    if trainer.logger:
        # the whole composed config, once (the logger flattens it for the hparams table)
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    stopped_by = None
    try:
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
    except SIGTERMException:
        stopped_by = "SIGTERM"
    except W2V2Error as e:
        last = Path(cfg.paths.checkpoint_dir) / "last.ckpt"
        if last.is_file():
            raise type(e)(f"{e} [checkpoint: {last}; continue with resume=true]") from None
        raise
    metrics: dict[str, float] = {}
    if stopped_by is None:
        val = trainer.validate(module, datamodule=datamodule, verbose=False)
        metrics = {k: float(v) for k, v in (val[0] if val else {}).items()}
    ckpt_dir = Path(cfg.paths.checkpoint_dir)
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path:
            best = Path(cb.best_model_path)
    monitor = next(c for c in trainer.callbacks if isinstance(c, RunHealthMonitor))
    ob = module.cfg.objective
    last = ckpt_dir / "last.ckpt"
    return TrainResult(
        output_dir=Path(cfg.paths.output_dir),
        checkpoint_dir=ckpt_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best,
        global_step=trainer.global_step,
        val_metrics=metrics,
        chance=chance_loss(ob.num_negatives + ob.cross_sample_negatives),
        warnings=[w.message for w in monitor.warnings],
        stopped_by=stopped_by,
    )
