"""Load a model from any of the forms it is saved in, and save a bare model state.

- a ``w2v2-pretrain`` training checkpoint (``*.ckpt`` written by Lightning);
- a model state file written by `save_model` (config + weights);
- a transformers directory (``config.json`` + weights) of a ``Wav2Vec2ForPreTraining``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model

STATE_FORMAT = "w2v2-pretrain/model-state/1"


def save_model(model: Wav2Vec2Model, path: str | Path) -> None:
    """Write the config and weights; atomic, so an interrupted save never leaves half a file."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(
        {"format": STATE_FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict()},
        tmp,
    )
    tmp.replace(path)


def _strip(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    out = {}
    for k, v in state.items():
        if k.startswith(prefix):
            out[k[len(prefix) :].replace("_orig_mod.", "")] = v
    return out


def read_checkpoint(path: str | Path) -> tuple[Wav2Vec2Config, dict[str, Any], dict[str, Any]]:
    """(config, model state dict, extra) of a training checkpoint or model state file.

    ``extra`` holds the training checkpoint's other hyperparameters (e.g. the data config).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: model file not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise DataError(f"{path}: not a readable checkpoint ({str(e).splitlines()[0]})") from None
    if not isinstance(obj, dict) or "state_dict" not in obj:
        raise DataError(f"{path}: not a w2v2-pretrain checkpoint or model state file")
    if obj.get("format") == STATE_FORMAT:
        return Wav2Vec2Config.from_dict(obj["config"]), obj["state_dict"], {}
    hparams = obj.get("hyper_parameters") or {}
    if "model" not in hparams:
        raise DataError(f"{path}: checkpoint has no model config (hyper_parameters.model)")
    try:
        cfg = Wav2Vec2Config.from_dict(dict(hparams["model"]))
    except ConfigError as e:
        raise DataError(f"{path}: {e}") from None
    return cfg, _strip(obj["state_dict"], "model."), hparams


def load_model(path: str | Path) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` in eval mode from a checkpoint, state file or transformers directory."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: directory without config.json (not a transformers export)")
        from w2v2_pretrain.interop.hf import load

        return load(path)
    cfg, state, _ = read_checkpoint(path)
    model = Wav2Vec2Model(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise DataError(
            f"{path}: weights do not match the config (missing {missing[:3]}, "
            f"unexpected {unexpected[:3]})"
        )
    return model.eval()
