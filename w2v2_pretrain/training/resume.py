"""Continuing a run: which checkpoint, and whether it fits the run's model.

The rest of exact resumption lives where its state does: the module's RNG capture and loop
progress fix (training/module.py), the sampler's mid-epoch position (data/sampler.py, fed by
``AudioDataModule._loader``) and the atomic checkpoint writes (training/callbacks.py).
"""

from __future__ import annotations

from pathlib import Path

from w2v2_pretrain.atomic import unfinished
from w2v2_pretrain.checkpoint import config_differences
from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.model_files import check_weights_fit, load_file, read_ours
from w2v2_pretrain.models import Wav2Vec2Config
from w2v2_pretrain.training.config import RunConfig

log = run_logger(__name__)  # every rank resumes: said once


def _newest(paths: list[Path]) -> Path | None:
    found = [p for p in paths if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime) if found else None


def find_resume_checkpoint(run: RunConfig) -> str | None:
    """``ckpt_path`` if given; with ``resume=true`` the newest of the run folder's
    ``checkpoints/last.ckpt`` and Lightning's SLURM requeue checkpoints (``hpc_ckpt_*.ckpt``),
    if any."""
    if run.ckpt_path and run.resume:
        raise ConfigError("ckpt_path and resume=true both given: use one")
    if run.ckpt_path:
        path = Path(run.ckpt_path)
        if not path.is_file():
            raise ConfigError(f"ckpt_path: {path} does not exist")
        return str(path)
    if not run.resume:
        return None
    folder, checkpoints = Path(run.paths["output_dir"]), Path(run.paths["checkpoint_dir"])
    for stale in unfinished(checkpoints, "*.ckpt"):
        stale.unlink(missing_ok=True)  # a save that a killed process never finished
    newest = _newest([checkpoints / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt")])
    if newest is not None:
        return str(newest)
    log.info("resume=true but %s holds no checkpoint yet: starting a new run", folder)
    return None


def check_resume_checkpoint(path: str, model: Wav2Vec2Config) -> None:
    """A one-line error unless ``path`` is a readable training checkpoint whose weights fit
    ``model``; model settings that differ without changing the weights are listed."""
    obj = load_file(path, "checkpoint")
    if "loops" not in obj or "model" not in (obj.get("hyper_parameters") or {}):
        raise DataError(f"{path}: not a w2v2-pretrain training checkpoint")
    saved, state, _ = read_ours(path, obj)
    changed = config_differences(saved, model)
    try:
        check_weights_fit(model, state, path)
    except DataError:
        raise DataError(
            f"{path}: trained with other model settings ({'; '.join(changed[:4])}); resume "
            "with the run's own model config"
        ) from None
    if changed:
        log.warning("resuming %s with changed model settings: %s", path, "; ".join(changed))
