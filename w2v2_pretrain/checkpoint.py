"""Load a model from any of the forms it is saved in, and save a bare model state.

- a ``w2v2-pretrain`` training checkpoint (``*.ckpt`` written by Lightning);
- a model state file written by `save_model` (config + weights);
- a fairseq wav2vec 2.0 pretraining checkpoint (``wav2vec_small.pt``-style);
- a transformers directory (``config.json`` + weights) of a ``Wav2Vec2ForPreTraining``.

Files load with ``torch.load(weights_only=True)``: nothing in a file can run code.
"""

from __future__ import annotations

import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model
from w2v2_pretrain.models.config import FeatureEncoderMode, base, large

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

    Weights-only loading never runs code from the file (a pickle can). Besides tensors and
    plain data, only the containers fairseq's checkpoints hold are allowed (an argparse
    namespace, omegaconf's DictConfig, numpy scalars); anything else is refused, as is a
    truncated or non-checkpoint file.
    """
    from w2v2_pretrain.interop.fairseq import safe_globals

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        with torch.serialization.safe_globals(safe_globals()):
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


@dataclass
class ModelSource:
    """A model's config and weights as read from a file or folder, and what it recorded.

    ``known``: the dotted config fields the source itself recorded (None: all of them); the
    others are this package's defaults. ``num_updates``: updates it was trained for, if known.
    """

    kind: str
    """``w2v2-pretrain``, ``fairseq`` or ``transformers``."""
    config: Wav2Vec2Config
    state_dict: dict[str, torch.Tensor]
    known: set[str] | None = None
    num_updates: int | None = None

    def model(self) -> Wav2Vec2Model:
        """A `Wav2Vec2Model` with this source's config and weights (in training mode)."""
        model = Wav2Vec2Model(self.config)
        model.load_state_dict(self.state_dict, strict=True)
        return model


# what a model's weights are shaped by: taken from the source when continuing to pretrain
ARCHITECTURE = {
    "feature_encoder.conv_layers",
    "feature_encoder.mode",
    "feature_encoder.conv_bias",
    "context_network.num_layers",
    "context_network.embed_dim",
    "context_network.ffn_dim",
    "context_network.num_heads",
    "context_network.layer_norm_first",
    "context_network.conv_pos",
    "context_network.conv_pos_groups",
    "quantizer.num_groups",
    "quantizer.num_vars",
    "quantizer.codevector_dim",
    "final_dim",
    "layer_norm_eps",
}


def recipe_for(source: Wav2Vec2Config, run: Wav2Vec2Config) -> Wav2Vec2Config:
    """The settings for what a source did not record and a run did not set: the run's, unless
    its encoder is of another kind than the source's; then the paper's recipe for the source's
    kind (BASE for group norm; LARGE for layer norm, whose feature penalty is 0: with 10 the
    layer-norm encoder's features can become constant and the codebooks collapse)."""
    mode = FeatureEncoderMode(source.feature_encoder.mode)
    if FeatureEncoderMode(run.feature_encoder.mode) == mode:
        return run
    return large() if mode == FeatureEncoderMode.layer_norm else base()


def config_for_init(
    source: ModelSource, run: Wav2Vec2Config, changed: set[str], temperature: str = "end"
) -> Wav2Vec2Config:
    """The model config of a run that starts from ``source``'s weights.

    The architecture is the source's (``changed`` may not alter it); every other setting is
    the run's where the run set it (``changed``: dotted fields), else the source's where it
    recorded it, else `recipe_for`'s (the run's, or the recipe of the source's encoder kind).
    ``temperature``: ``end`` starts the Gumbel schedule where the source's ended (its floor,
    or where ``num_updates`` left it), ``restart`` from the schedule's start.
    """
    src, mine = source.config.flat(), run.flat()
    default = recipe_for(source.config, run).flat()
    known = set(src) if source.known is None else source.known
    merged = {}
    for key, value in src.items():
        if key in ARCHITECTURE:
            if key in changed and mine[key] != value:
                raise ConfigError(
                    f"model.{key}={mine[key]}: the architecture comes from init_from "
                    f"({key}={value}); only training settings (dropout, masking, LayerDrop, "
                    "loss weights, ...) can change"
                )
            merged[key] = value
        else:
            merged[key] = mine[key] if key in changed else value if key in known else default[key]
    cfg = Wav2Vec2Config.from_flat(merged)
    if temperature == "end":
        start, floor, decay = cfg.quantizer.temperature
        reached = floor
        if source.num_updates is not None:
            reached = max(start * decay**source.num_updates, floor)
        cfg.quantizer.temperature = [reached, floor, decay]
    elif temperature != "restart":
        raise ConfigError(f"init_temperature: expected 'end' or 'restart', got {temperature!r}")
    return cfg.validate()


def read_model_source(path: str | Path) -> ModelSource:
    """Config and weights from any supported form (checked to fit each other)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: directory without config.json (not a transformers model)")
        from w2v2_pretrain.interop.hf import read_hf

        return read_hf(path)
    obj = load_file(path)
    from w2v2_pretrain.interop.fairseq import is_fairseq_checkpoint, read_fairseq

    if is_fairseq_checkpoint(obj):
        return read_fairseq(path, obj)
    cfg, state, hparams = _ours(path, obj)
    check_weights_fit(cfg, state, str(path))
    steps = obj.get("global_step")
    return ModelSource(
        "w2v2-pretrain", cfg, state, None, int(steps) if steps is not None else None
    )


def read_checkpoint(path: str | Path) -> tuple[Wav2Vec2Config, dict[str, Any], dict[str, Any]]:
    """(config, model state dict, extra) of a training checkpoint or model state file.

    ``extra`` holds the training checkpoint's other hyperparameters (e.g. the data config).
    """
    return _ours(Path(path), load_file(path))


def _ours(
    path: Path, obj: dict[str, Any]
) -> tuple[Wav2Vec2Config, dict[str, Any], dict[str, Any]]:
    if "state_dict" not in obj:
        raise DataError(f"{path}: not a w2v2-pretrain, fairseq or transformers checkpoint")
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
    """``model.field: a -> b`` for every model field that differs."""
    fa, fb = a.flat(), b.flat()
    return [f"model.{k}: {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k]]


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
    """A `Wav2Vec2Model` in eval mode from a checkpoint, model state file, fairseq checkpoint
    or transformers directory."""
    return read_model_source(path).model().eval()
