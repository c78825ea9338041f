"""``train(cfg)``: build everything from a composed Hydra config and run pretraining.

The composed config is typed by `RunConfig` (training/config.py). What a run is made of, in
order: the resume checkpoint (training/resume.py), the model config (with ``init_from``:
training/init_from.py), the data module, the cross-setting checks (training/checks.py), the
LightningModule, the callbacks and the Trainer.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import pytorch_lightning as pl
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.checkpoint import ModelSource
from w2v2_pretrain.data.datamodule import AudioDataModule
from w2v2_pretrain.errors import (
    CheckpointWriteError,
    ConfigError,
    NonFiniteStop,
    TrainingError,
    W2V2Error,
    one_line,
)
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models import Wav2Vec2Config
from w2v2_pretrain.training.callbacks import AtomicCheckpointIO
from w2v2_pretrain.training.checks import accumulation_for, check_combinations
from w2v2_pretrain.training.config import RunConfig
from w2v2_pretrain.training.health import RunHealth, RunHealthMonitor, chance_loss
from w2v2_pretrain.training.init_from import fields_set_by_run, model_for_init
from w2v2_pretrain.training.module import Wav2Vec2Pretraining
from w2v2_pretrain.training.probe_callback import probe_summary_lines
from w2v2_pretrain.training.quiet import quiet_lightning
from w2v2_pretrain.training.resume import check_resume_checkpoint, find_resume_checkpoint
from w2v2_pretrain.training.schedules import warmup_updates
from w2v2_pretrain.training.signals import Interrupted, StopSignals
from w2v2_pretrain.training.throughput import cores_per_process

log = run_logger(__name__)


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
    """``SIGTERM`` (a scheduler) or ``SIGINT`` (Ctrl-C) when a signal stopped the run; in
    training, after the current update and with a checkpoint."""
    probe_lines: list[str] = field(default_factory=list)
    """The latest probe round's summary lines (empty when probes are off)."""
    data_lines: list[str] = field(default_factory=list)
    """Whether loading held training back, or padding / cropping wasted much, and what to
    change (empty when neither; training/throughput.py)."""


def typed(cfg: DictConfig) -> RunConfig:
    """The composed config as a `RunConfig` (interpolations resolved), once the settings
    that must be given are there."""
    if OmegaConf.is_missing(cfg.data, "manifest_dir"):
        raise ConfigError(
            "data.manifest_dir is required: a folder with train.tsv and valid.tsv "
            "(make them with `w2v2-manifest AUDIO_ROOT --dest DIR`)"
        )
    run = OmegaConf.to_object(cfg)
    assert isinstance(run, RunConfig), "train.yaml is composed onto run_schema"
    for name in ("seed", "val_noise_seed", "fixed_noise_seed"):
        value = getattr(run, name)
        if value is not None and not 0 <= value < 2**32:
            raise ConfigError(f"{name}: must be in [0, 2**32), got {value}")
    if run.max_bad_updates < 1:
        raise ConfigError(
            f"max_bad_updates: must be at least 1, got {run.max_bad_updates} (updates in a row "
            "skipped for non-finite values before the run stops; a large number in practice "
            "never stops it)"
        )
    if not run.init_from and _hydra_choice("experiment") == "continue_pretraining":
        raise ConfigError(
            "init_from is required by experiment=continue_pretraining: a transformers "
            "Wav2Vec2ForPreTraining folder, a fairseq checkpoint or one of ours"
        )
    return run


def _hydra_choice(group: str) -> str | None:
    """The option of ``group`` this run chose (None outside Hydra's runtime)."""
    return HydraConfig.get().runtime.choices.get(group) if HydraConfig.initialized() else None


def model_of_run(
    run: RunConfig, resume_from: str | None
) -> tuple[Wav2Vec2Config, ModelSource | None]:
    """The run's model config, and the source whose weights it starts from (or None)."""
    model = run.model.validate()
    if not run.init_from:
        return model, None
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    set_by_run = fields_set_by_run(model, overrides, _hydra_choice("model"))
    return model_for_init(model, run.init_from, set_by_run, run.init_temperature, resume_from)


def build(
    cfg: DictConfig, resume_from: str | None = None
) -> tuple[AudioDataModule, Wav2Vec2Pretraining, pl.Trainer]:
    """The data module, the LightningModule and the Trainer (bad settings: `ConfigError`).

    ``resume_from``: the checkpoint the run continues from (None: a new run); with
    ``init_from`` and no resume, the model starts from the source's weights.
    """
    run = typed(cfg)
    model, source = model_of_run(run, resume_from)
    overfit = bool(run.trainer.get("overfit_batches", 0))
    # overfitting one batch: it must truly repeat (same crops, masks, distractors, noise)
    fixed_noise = run.seed if overfit and run.fixed_noise_seed is None else run.fixed_noise_seed
    bad_files_log = Path(run.paths["output_dir"]) / "bad_files.tsv"
    datamodule = AudioDataModule(run.data)
    check_combinations(model, run.data)
    datamodule.plan_masks_for(
        model,
        train_seed=run.seed if fixed_noise is None else fixed_noise,
        fixed=fixed_noise is not None,
        val_seed=run.val_noise_seed,
    )
    datamodule.fixed_order = overfit
    datamodule.bad_files_log = bad_files_log
    module = Wav2Vec2Pretraining(
        model=model.to_dict(),
        optimizer=_instantiate(run.optim["optimizer"], "optim.optimizer"),
        scheduler=_instantiate(run.optim["scheduler"], "optim.scheduler"),
        sample_rate=run.data.sample_rate,
        fixed_noise_seed=fixed_noise,
        codebook_image_every=run.codebook_image_every,
        compile=run.compile,
        max_bad_updates=run.max_bad_updates,
        on_bad_file=run.data.on_bad_file,
        bad_files_log=str(bad_files_log),
    )
    if source is not None:
        module.model.load_state_dict(source.state_dict, strict=True)
        log.info(
            "starting from the %s weights of %s (fresh optimizer, schedule and step)",
            source.kind,
            run.init_from,
        )
    trainer = _trainer(run, model)
    trainer.accumulate_grad_batches, audio_line = accumulation_for(
        run.data, trainer, run.trainer["accumulate_grad_batches"]
    )
    log.info(audio_line)
    return datamodule, module, trainer


def _trainer(run: RunConfig, model: Wav2Vec2Config) -> pl.Trainer:
    """The Trainer with the configured callbacks, the run-health monitor and atomic saves."""
    callbacks = [
        _instantiate(c, f"callbacks.{name}")
        for name, c in (run.callbacks or {}).items()
        # Lightning refuses a progress-bar callback when the bar is switched off
        if name != "progress" or run.trainer.get("enable_progress_bar", True)
    ]
    health = RunHealth(
        config=run.health,
        num_distractors=model.objective.num_distractors,
        num_codevectors=model.quantizer.num_codevectors,
        warmup_updates=warmup_updates(run.optim["scheduler"]["warmup"], run.trainer["max_steps"]),
    )
    callbacks.append(RunHealthMonitor(health))
    logger = _instantiate(run.logger, "logger") if run.logger else False
    return _instantiate(
        run.trainer,
        "trainer",
        callbacks=callbacks,
        logger=logger,
        plugins=[AtomicCheckpointIO()],
    )


def _instantiate(node: dict, where: str, **kwargs):
    """``hydra.utils.instantiate``, with a bad argument reported as one line naming the node
    (Hydra wraps what the target raised; a bug elsewhere keeps its traceback)."""
    try:
        return hydra.utils.instantiate(node, **kwargs)
    except InstantiationException as e:
        cause: BaseException = e
        while cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, W2V2Error):
            raise cause from None
        raise ConfigError(f"{where}: {type(cause).__name__}: {one_line(cause)}") from e


def train(cfg: DictConfig) -> TrainResult:
    """Pretrain as configured; return where outputs went and the final validation metrics."""
    quiet_lightning()
    # our batch sampler resumes mid-epoch from the loop's progress (AudioDataModule._loader),
    # so Lightning's generic warning about non-resumable loaders does not apply
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    run = typed(cfg)
    ckpt_path = find_resume_checkpoint(run)
    pl.seed_everything(run.seed, workers=True)
    datamodule, module, trainer = build(cfg, ckpt_path)
    # plain data: checkpoints load with weights_only=True
    module.run_config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if ckpt_path:
        module.run_config = check_resume_checkpoint(ckpt_path, module.cfg, module.run_config)
    if trainer.is_global_zero:
        record_start(cfg, Path(run.paths["output_dir"]), ckpt_path)
    if trainer.logger:
        # the whole composed config, once (the logger flattens it for the hparams table)
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
    checkpoint_dir = Path(run.paths["checkpoint_dir"])
    metrics: dict[str, float] = {}
    with StopSignals() as stops:
        try:
            trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path)
            if stops.signal is None:
                val = trainer.validate(module, datamodule=datamodule, verbose=False)
                metrics = {k: float(v) for k, v in (val[0] if val else {}).items()}
        except (SIGTERMException, Interrupted):
            stops.signal = stops.signal or "SIGTERM"
        except NonFiniteStop as e:
            raise TrainingError(nonfinite_advice(e, run)) from None
        except CheckpointWriteError:
            raise  # it names the checkpoint that is intact
        except W2V2Error as e:
            last = checkpoint_dir / "last.ckpt"
            if last.is_file():
                # one_line: the message of an error a loader worker raised, not its traceback
                raise type(e)(
                    f"{one_line(e)} [checkpoint: {last}; continue with resume=true]"
                ) from None
            raise
    return _result(run, trainer, module, metrics if stops.signal is None else {}, stops.signal)


def record_start(cfg: DictConfig, folder: Path, resumed_from: str | None) -> Path:
    """Keep this start's composed config as ``configs/start-NNN.yaml`` in the run folder (Hydra
    rewrites ``.hydra/config.yaml`` at every start, so it holds only the latest)."""
    starts = folder / "configs"
    n = 1 + max((int(p.stem.split("-")[1]) for p in starts.glob("start-*.yaml")), default=0)
    path = starts / f"start-{n:03d}.yaml"
    head = f"# start {n}: " + (f"resumed from {resumed_from}" if resumed_from else "a new run")
    with atomic_open(path, "w") as f:
        f.write(head + "\n" + OmegaConf.to_yaml(cfg, resolve=True))
    return path


def nonfinite_advice(stop: NonFiniteStop, run: RunConfig) -> str:
    """What to do after ``max_bad_updates`` non-finite updates: which checkpoint to go back to
    (the newest saved before the first skipped update: the weights after it are the ones that
    gave the non-finite values, and last.ckpt holds them), which settings to change, and which
    of them a resume can change."""
    folder = Path(run.paths["checkpoint_dir"])
    good = newest_checkpoint_before(folder, stop.first)
    lr = run.optim["optimizer"].get("lr")
    fresh = f"optim.optimizer.lr below {lr:g}" if isinstance(lr, float | int) else "a lower lr"
    if good is None:
        back = (
            f"no checkpoint precedes update {stop.first}: start a new run (a new "
            f"hydra.run.dir) with {fresh}"
        )
    else:
        path, step = good
        back = (
            f"go back to {path} (update {step}, saved before the first skipped update; "
            f"last.ckpt holds the weights that gave them): a resume keeps the learning rate "
            f"(restored with the optimizer and its schedule), so lower it in a new run from "
            f"those weights, init_from={path} {fresh} hydra.run.dir=NEW (fresh optimizer, "
            f"schedule and step); trainer.gradient_clip_val does apply on resume "
            f"(ckpt_path={path} trainer.gradient_clip_val=1.0)"
        )
    return (
        f"{stop}; {back}. Also: bf16-mixed instead of 16-mixed, data.verify=decode (broken audio)"
    )


def newest_checkpoint_before(folder: Path, step: int) -> tuple[Path, int] | None:
    """The checkpoint in ``folder`` with the highest global step below ``step``, and that step
    (read without loading the weights: memory-mapped)."""
    found = []
    for path in folder.glob("*.ckpt"):
        try:
            saved = torch.load(path, mmap=True, weights_only=True, map_location="cpu")
        except Exception:  # noqa: BLE001 - an unreadable file is simply not a candidate
            continue
        if isinstance(saved, dict) and saved.get("global_step", step) < step:
            found.append((saved["global_step"], path.name, path))
    if not found:
        return None
    best = max(found)
    return best[2], best[0]


def _result(
    run: RunConfig,
    trainer: pl.Trainer,
    module: Wav2Vec2Pretraining,
    metrics: dict[str, float],
    stopped_by: str | None,
) -> TrainResult:
    checkpoint_dir = Path(run.paths["checkpoint_dir"])
    best = None
    for cb in trainer.checkpoint_callbacks:
        if getattr(cb, "monitor", None) and cb.best_model_path:
            best = Path(cb.best_model_path)
    monitor = next(c for c in trainer.callbacks if isinstance(c, RunHealthMonitor))
    last = checkpoint_dir / "last.ckpt"
    return TrainResult(
        output_dir=Path(run.paths["output_dir"]),
        checkpoint_dir=checkpoint_dir,
        last_checkpoint=last if last.is_file() else None,
        best_checkpoint=best,
        global_step=trainer.global_step,
        val_metrics=metrics,
        chance=chance_loss(module.cfg.objective.num_distractors),
        warnings=[w.message for w in monitor.warnings],
        stopped_by=stopped_by,
        probe_lines=probe_summary_lines(trainer.callbacks),
        data_lines=module.data_stats.advice(
            num_workers=run.data.num_workers,
            cores=cores_per_process(trainer.num_devices),
            collate=str(run.data.collate),
            bad_files=int(module._counters[1]),
        ),
    )
