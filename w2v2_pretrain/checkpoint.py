"""Load a model from any of the forms it is saved in, and save a bare model state.

- a ``w2v2-pretrain`` training checkpoint (``*.ckpt`` written by Lightning);
- a model state file written by `save_model` (config + weights);
- a transformers directory (``config.json`` + weights) of a ``Wav2Vec2ForPreTraining``.
"""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model

STATE_FORMAT = "w2v2-pretrain/model-state/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, flushed to disk, then renamed
    over ``path``: whatever kills the process, ``path`` is the old file or the new one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)  # the rename itself reaches the disk
    finally:
        os.close(fd)


def save_model(model: Wav2Vec2Model, path: str | Path) -> None:
    """Write the config and weights atomically (see `atomic_save`)."""
    atomic_save(
        {"format": STATE_FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict()},
        path,
    )


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        if k.startswith(prefix):
            out[k[len(prefix) :].replace("_orig_mod.", "")] = v
    return out


def load_file(path: str | Path, what: str = "model file") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint-like file, with one-line errors.

    Weights-only loading never runs code from the file (a pickle can); a file that needs more
    than tensors and plain data is refused, as is a truncated or non-checkpoint file.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        unsupported = re.search(r"GLOBAL ([\w.]+)", str(e))
        detail = f" (it holds {unsupported.group(1)})" if unsupported else ""
        raise DataError(
            f"{path}: refused: not plain tensors and data{detail}; weights-only loading "
            "never runs code from a file"
        ) from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {reason}"
        ) from None
    if not isinstance(obj, dict):
        raise DataError(f"{path}: not a checkpoint (a {type(obj).__name__}, not a mapping)")
    return obj


def read_checkpoint(path: str | Path) -> tuple[Wav2Vec2Config, dict[str, Any], dict[str, Any]]:
    """(config, model state dict, extra) of a training checkpoint or model state file.

    ``extra`` holds the training checkpoint's other hyperparameters (e.g. the data config).
    """
    path = Path(path)
    obj = load_file(path)
    if "state_dict" not in obj:
        raise DataError(f"{path}: not a w2v2-pretrain checkpoint or model state file")
    try:
        if obj.get("format") == STATE_FORMAT:
            return Wav2Vec2Config.from_dict(obj["config"]), obj["state_dict"], {}
        hparams = obj.get("hyper_parameters") or {}
        if "model" not in hparams:
            raise DataError(f"{path}: checkpoint has no model config (hyper_parameters.model)")
        cfg = Wav2Vec2Config.from_dict(dict(hparams["model"]))
    except ConfigError as e:
        raise DataError(f"{path}: {e}") from None
    return cfg, _strip(obj["state_dict"], "model."), hparams


def config_differences(a: Wav2Vec2Config, b: Wav2Vec2Config) -> list[str]:
    """``field: a -> b`` for every dotted model field that differs."""

    def flat(d: dict[str, Any], prefix: str = "model.") -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in d.items():
            out |= flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v}
        return out

    fa, fb = flat(a.to_dict()), flat(b.to_dict())
    return [f"{k}: {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k]]


def check_weights_fit(cfg: Wav2Vec2Config, state: dict[str, Any], where: str) -> None:
    """Raise a one-line `DataError` if ``state`` is not a state dict of a model of ``cfg``."""
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in Wav2Vec2Model(cfg).state_dict().items()}
    found = {k: tuple(v.shape) for k, v in state.items()}
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    wrong = sorted(k for k in set(expected) & set(found) if expected[k] != found[k])
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {missing[:3]}")
        if unexpected:
            parts.append(f"unexpected {unexpected[:3]}")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} of other shapes, e.g. {k} {found[k]} vs {expected[k]}")
        raise DataError(f"{where}: weights do not match the model config ({'; '.join(parts)})")


def load_model(path: str | Path) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` in eval mode from a checkpoint, state file or transformers directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: directory without config.json (not a transformers export)")
        from w2v2_pretrain.interop.hf import load

        return load(path)
    cfg, state, _ = read_checkpoint(path)
    check_weights_fit(cfg, state, str(path))
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(state, strict=True)
    return model.eval()
