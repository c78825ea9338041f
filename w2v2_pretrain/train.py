"""``train(cfg)``: build everything from a composed Hydra config and run pretraining.

What a run is made of, in order: the typed config (training/config.py), the resume checkpoint
(training/resume.py), the model config (with ``init_from``: training/init_from.py), the
cross-setting checks (training/checks.py), the data module, the LightningModule, the callbacks
and the Trainer. What the run reports when it ends is training/result.py.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import hydra
import pytorch_lightning as pl
from hydra.errors import InstantiationException
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.utilities.exceptions import SIGTERMException

from w2v2_pretrain.data.collate import MaskSeeds
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
from w2v2_pretrain.training.config import RunConfig, run_config
from w2v2_pretrain.training.health import RunHealth, RunHealthMonitor
from w2v2_pretrain.training.init_from import model_of_run
from w2v2_pretrain.training.module import Wav2Vec2Pretraining
from w2v2_pretrain.training.probe_callback import ProbeCallback
from w2v2_pretrain.training.quiet import quiet_lightning
from w2v2_pretrain.training.result import TrainResult, run_result
from w2v2_pretrain.training.resume import (
    check_resume_checkpoint,
    find_resume_checkpoint,
    nonfinite_advice,
    record_start,
)
from w2v2_pretrain.training.schedules import warmup_updates
from w2v2_pretrain.training.signals import Interrupted, StopSignals

log = run_logger(__name__)


def build(
    cfg: DictConfig, resume_from: str | None = None
) -> tuple[AudioDataModule, Wav2Vec2Pretraining, pl.Trainer]:
    """The data module, the LightningModule and the Trainer (bad settings: `ConfigError`).

    ``resume_from``: the checkpoint the run continues from (None: a new run); with
    ``init_from`` and no resume, the model starts from the source's weights.
    """
    run = run_config(cfg)
    model, source = model_of_run(run, resume_from)
    check_combinations(model, run.data)
    # overfitting one batch: it must truly repeat (same crops, masks, distractors, noise)
    overfit = bool(run.trainer.get("overfit_batches", 0))
    fixed_noise = run.seed if overfit and run.fixed_noise_seed is None else run.fixed_noise_seed
    bad_files_log = Path(run.paths.output_dir) / "bad_files.tsv"
    datamodule = AudioDataModule(
        run.data,
        model=model,
        seeds=MaskSeeds(
            train=run.seed if fixed_noise is None else fixed_noise,
            val=run.val_noise_seed,
            fixed=fixed_noise is not None,
        ),
        fixed_order=overfit,
        bad_files_log=bad_files_log,
    )
    # plain data (checkpoints load with weights_only=True); a resume says what changed
    recorded = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    if resume_from:
        recorded = check_resume_checkpoint(resume_from, model, recorded)
    module = Wav2Vec2Pretraining(
        model,
        optimizer=_instantiate(run.optim["optimizer"], "optim.optimizer"),
        scheduler=_instantiate(run.optim["scheduler"], "optim.scheduler"),
        sample_rate=run.data.sample_rate,
        fixed_noise_seed=fixed_noise,
        codebook_image_every=run.codebook_image_every,
        compile=run.compile,
        max_bad_updates=run.max_bad_updates,
        on_bad_file=run.data.on_bad_file,
        bad_files_log=str(bad_files_log),
        run_config=recorded,
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
    """The Trainer with the configured callbacks, the run's own (health, probes) and atomic
    checkpoint files."""
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
    callbacks += [RunHealthMonitor(health), ProbeCallback(run.probe)]
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
    # our batch sampler resumes mid-epoch from the loop's progress (training/run_state.py),
    # so Lightning's generic warning about non-resumable loaders does not apply
    warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
    run = run_config(cfg)
    ckpt_path = find_resume_checkpoint(run)
    pl.seed_everything(run.seed, workers=True)
    datamodule, module, trainer = build(cfg, ckpt_path)
    if trainer.is_global_zero:
        record_start(cfg, Path(run.paths.output_dir), ckpt_path)
    if trainer.logger:
        # the whole composed config, once (the logger flattens it for the hparams table)
        trainer.logger.log_hyperparams(OmegaConf.to_container(cfg, resolve=True))
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
        except W2V2Error as e:
            raise _with_checkpoint(e, Path(run.paths.checkpoint_dir)) from None
    return run_result(run, trainer, module, metrics if stops.signal is None else {}, stops.signal)


def _with_checkpoint(error: W2V2Error, checkpoint_dir: Path) -> W2V2Error:
    """The error a run stopped on, as one line naming the checkpoint to continue from (a
    `CheckpointWriteError` names the intact one itself)."""
    last = checkpoint_dir / "last.ckpt"
    if isinstance(error, CheckpointWriteError) or not last.is_file():
        return error
    # one_line: the message of an error a loader worker raised, not its traceback
    return type(error)(f"{one_line(error)} [checkpoint: {last}; continue with resume=true]")
