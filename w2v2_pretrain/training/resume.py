"""Continuing a run: which checkpoint, whether it fits the run's model, what a resume with
changed settings changes, the record of each start, and where to go back to after a run of
non-finite updates.

The rest of exact resumption lives where its state does: the random states, the loop-progress
fixes and the interrupted epoch's position (training/run_state.py, applied by the module), the
sampler's mid-epoch skip (data/sampler.py) and the atomic checkpoint writes
(training/callbacks.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from w2v2_pretrain.atomic import atomic_open, unfinished
from w2v2_pretrain.errors import ConfigError, DataError, NonFiniteStop
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.model_files import check_weights_fit, load_file, read_ours
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.fields import flatten
from w2v2_pretrain.training.config import RunConfig
from w2v2_pretrain.training.init_from import ARCHITECTURE

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
    folder, checkpoints = Path(run.paths.output_dir), Path(run.paths.checkpoint_dir)
    for stale in unfinished(checkpoints, "*.ckpt"):
        stale.unlink(missing_ok=True)  # a save that a killed process never finished
    newest = _newest([checkpoints / "last.ckpt", *folder.glob("hpc_ckpt_*.ckpt")])
    if newest is not None:
        return str(newest)
    log.info("resume=true but %s holds no checkpoint yet: starting a new run", folder)
    return None


def check_resume_checkpoint(
    path: str, model: Wav2Vec2Config, run: dict[str, Any]
) -> dict[str, Any]:
    """A one-line error unless ``path`` is a readable training checkpoint whose weights fit
    ``model`` (and whose architecture is ``model``'s); then one line per setting that differs
    from the checkpoint's (``run``: this start's resolved config), saying whether it takes
    effect. Returns the run config to record in this run's checkpoints (`say_changes`)."""
    obj = load_file(path, "checkpoint")
    if "loops" not in obj or "model" not in (obj.get("hyper_parameters") or {}):
        raise DataError(f"{path}: not a w2v2-pretrain training checkpoint")
    saved, state, _ = read_ours(path, obj)
    changed = config_differences(saved, model)
    # the same weights can fit another network (layer_norm_first, layer_norm_eps): refused too
    fits = not any(c.split(":")[0].removeprefix("model.") in ARCHITECTURE for c in changed)
    try:
        check_weights_fit(model, state, path)
    except DataError:
        fits = False
    if not fits:
        raise DataError(
            f"{path}: trained with other model settings ({'; '.join(changed[:4])}); resume "
            "with the run's own model config"
        )
    for line in changed:  # training settings only (dropout, masking, loss weights, ...)
        log.info(
            "%s %s: takes effect (a training setting; the weights are the same)", CHANGED, line
        )
    return say_changes(obj, path, run)


def config_differences(a: Wav2Vec2Config, b: Wav2Vec2Config) -> list[str]:
    """``model.field: a -> b`` for every model field that differs."""
    fa, fb = a.flat(), b.flat()
    return [f"model.{k}: {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k]]


def say_changes(checkpoint: dict[str, Any], path: str, run: dict[str, Any]) -> dict[str, Any]:
    """One line per run setting that differs from the one the checkpoint recorded.

    Returns ``run`` with the settings a resume restores from the checkpoint
    (``optim.optimizer``) as the checkpoint has them: what this run's checkpoints record, so
    the record says what the run trains with."""
    before = checkpoint.get("run_config")
    if before is None:
        log.info(
            "%s records no run config (an earlier version wrote it): only its model settings "
            "were compared",
            path,
        )
        return run
    step = int(checkpoint.get("global_step", 0))
    for key, old, new in run_config_differences(before, run):
        warn, effect = resume_effect(key, step, path)
        (log.warning if warn else log.info)("%s %s: %s -> %s: %s", CHANGED, key, old, new, effect)
    kept = dict(run)
    if isinstance(before.get("optim"), dict) and isinstance(run.get("optim"), dict):
        kept["optim"] = {**run["optim"], "optimizer": before["optim"].get("optimizer")}
    return kept


CHANGED = "changed since the checkpoint:"  # how each line begins
# not compared: how the run is continued, and where it writes (a checkpoint copied to another
# run folder resumes there)
_NOT_COMPARED = (
    "ckpt_path",
    "resume",
    "init_from",
    "init_temperature",
    "model",
    "paths",
    "logger",
)
# settings that change the batches, their order or the updates they make: they take effect,
# but the resumed run no longer continues the checkpoint's exactly
_NOT_EXACT = (  # and every data.* but those of _DATA_ONLY_HOW
    "seed",
    "fixed_noise_seed",
    "trainer.accumulate_grad_batches",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.precision",
    "trainer.overfit_batches",
)
# how the data is read and checked, not what it is
_DATA_ONLY_HOW = ("num_workers", "pin_memory", "persistent_workers", "verify", "on_bad_file")


def run_config_differences(
    before: dict[str, Any], now: dict[str, Any]
) -> list[tuple[str, Any, Any]]:
    """``(dotted key, checkpoint's value, this start's value)`` for every setting that differs
    (paths under the run folder count as equal when only the folder moved)."""
    old_dir = str((before.get("paths") or {}).get("output_dir", ""))
    new_dir = str((now.get("paths") or {}).get("output_dir", ""))
    a, b = flatten(before), flatten(now)
    out = []
    for key in sorted(a.keys() | b.keys()):
        if key.split(".")[0] in _NOT_COMPARED:
            continue
        old, new = a.get(key), b.get(key)
        if old_dir and isinstance(old, str) and old.startswith(old_dir):
            old = new_dir + old[len(old_dir) :]
        if old != new:
            out.append((key, a.get(key), new))
    return out


def resume_effect(key: str, step: int, path: str) -> tuple[bool, str]:
    """Whether a changed ``key`` takes effect when resuming the checkpoint at ``path`` (saved at
    update ``step``), in words; True first where it does not, or not exactly."""
    if key.startswith("optim.optimizer."):
        return True, (
            "does not take effect: the optimizer's settings are restored from the checkpoint "
            "with its state (and the LR schedule scales the restored lr); to train with it, "
            f"start a new run from these weights: init_from={path} hydra.run.dir=NEW (fresh "
            "optimizer, schedule and step)"
        )
    if key == "optim.scheduler._target_":
        return True, (
            "the checkpoint's LR scheduler state is loaded into the other scheduler; for "
            f"another schedule start a new run: init_from={path} hydra.run.dir=NEW"
        )
    if key.startswith("optim.scheduler."):
        # LambdaLR restores its step and base LRs but keeps the run's own function
        # (a functools.partial: its arguments are not in the state torch saves)
        return False, (
            f"takes effect from update {step + 1} on: the schedule is the new one, of the step, "
            "scaled by the checkpoint's optim.optimizer.lr (update "
            f"{step}, the first after the resume, keeps the LR the checkpoint's schedule set)"
        )
    if key.split(".")[1] not in _DATA_ONLY_HOW if key.startswith("data.") else key in _NOT_EXACT:
        return True, (
            "takes effect, but the batches, their order or the updates change: the resumed "
            "run does not continue the checkpoint's exactly (the epoch in progress goes on "
            "after as many of the new batches as it had done)"
        )
    return False, "takes effect"


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
    folder = Path(run.paths.checkpoint_dir)
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
