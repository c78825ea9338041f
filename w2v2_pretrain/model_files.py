"""Reading and writing model files: the primitives every format shares.

- `atomic_save`: ``torch.save`` that leaves the old file or the new one, never half of one;
- `save_model`: a bare model state file (config + weights, `STATE_FORMAT`);
- `load_file`: ``torch.load(weights_only=True)`` with the allow-list of `safe_globals`, so
  nothing in a file can run code, and one-line errors for missing, truncated or foreign files;
- `read_ours`: config, weights and hyperparameters of our own training checkpoint or model
  state file (`STATE_FORMAT`);
- `ModelSource` (a model's config and weights as read from any format) and
  `check_weights_fit`.

A leaf: it imports only `w2v2_pretrain.atomic`, `w2v2_pretrain.errors` and
`w2v2_pretrain.models`, so the format readers (`w2v2_pretrain.interop`) and the dispatcher
(`w2v2_pretrain.model_sources`) both build on it.
"""

from __future__ import annotations

import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model

STATE_FORMAT = "w2v2-pretrain/model-state/1"


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` through a temporary file in the same folder, flushed to disk, then renamed
    over ``path``: whatever kills the process, ``path`` is the old file or the new one."""
    with atomic_open(path) as f:
        torch.save(obj, f)


def save_model(model: Wav2Vec2Model, path: str | Path) -> None:
    """Write the config and weights atomically (see `atomic_save`)."""
    atomic_save(
        {"format": STATE_FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict()},
        path,
    )


# -- what loading allows ------------------------------------------------------------------


def safe_globals() -> list[Any]:
    """Exactly the classes fairseq's wav2vec 2.0 checkpoints pickle (besides tensors):
    argparse.Namespace (fairseq <= 0.10), a plain omegaconf DictConfig with its metadata
    (Oct 2020 - Mar 2021), the type objects that metadata names, numpy scalars and arrays
    (values in ``extra_state``)."""
    import argparse
    import collections
    import typing

    import numpy as np
    from omegaconf import DictConfig, ListConfig
    from omegaconf.base import ContainerMetadata, Metadata
    from omegaconf.nodes import AnyNode, BooleanNode, FloatNode, IntegerNode, StringNode

    found = [
        argparse.Namespace,
        collections.defaultdict,
        typing.Any,
        dict,
        list,
        tuple,
        int,
        float,
        str,
        bool,
        DictConfig,
        ListConfig,
        ContainerMetadata,
        Metadata,
        AnyNode,
        StringNode,
        IntegerNode,
        FloatNode,
        BooleanNode,
        np.ndarray,
        np.dtype,
        *(type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")),
    ]
    core = getattr(np, "_core", None) or np.core  # numpy 2 / 1
    found += [core.multiarray._reconstruct, core.multiarray.scalar]
    return found


def load_file(path: str | Path, what: str = "model file") -> dict[str, Any]:
    """``torch.load(weights_only=True)`` of a checkpoint-like file, with one-line errors.

    Weights-only loading never runs code from the file (a pickle can). Besides tensors and
    plain data, only the containers fairseq's checkpoints hold are allowed (`safe_globals`:
    an argparse namespace, omegaconf's DictConfig, numpy scalars); anything else is refused,
    as is a truncated or non-checkpoint file.
    """
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


# -- our own files ------------------------------------------------------------------------


def read_ours(
    path: str | Path, obj: dict[str, Any]
) -> tuple[Wav2Vec2Config, dict[str, torch.Tensor], dict[str, Any]]:
    """(config, model state dict, hyperparameters) of our training checkpoint or model state
    file, already loaded (`load_file`) from ``path``; a one-line `DataError` if it is neither.

    A training checkpoint's weights lose Lightning's ``model.`` prefix (and ``torch.compile``'s
    ``_orig_mod.``); its hyperparameters are the module's (``model``, ``data``, ...). A model
    state file has none: ``{}``.
    """
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
    state = {
        k[len("model.") :].replace("_orig_mod.", ""): v
        for k, v in obj["state_dict"].items()
        if k.startswith("model.")
    }
    return cfg, state, hparams


# -- a model as read from any format --------------------------------------------------------


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
