"""fairseq wav2vec 2.0 pretraining checkpoints, both ways, without fairseq installed.

Reads the three forms fairseq has saved (``wav2vec_small.pt``-style ``args`` namespaces of
fairseq <= 0.10; a pickled omegaconf ``DictConfig``, Oct 2020 - Mar 2021; a plain ``cfg`` dict
since), with either weight-norm naming of the positional conv; writes the current form, which
fairseq's ``checkpoint_utils.load_model_ensemble_and_task`` loads. The file itself is loaded by
`w2v2_pretrain.model_files.load_file` (weights-only, with exactly the classes these files hold
allow-listed); this module works on the loaded object. Its table of parameter names (`NAMES`)
and fairseq_config.py's of config fields (`FIELDS`, both directions) are the one place that
knows fairseq's names.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.interop.fairseq_config import config_from_fairseq, config_to_fairseq, sections
from w2v2_pretrain.interop.names import Renames
from w2v2_pretrain.model_files import ModelSource, atomic_save, check_weights_fit
from w2v2_pretrain.models.config import FeatureEncoderMode, Wav2Vec2Config
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Model

_CONV, _FS_CONV = "feature_encoder.conv_layers.{i}.", "feature_extractor.conv_layers.{i}."
_BLOCK, _FS_BLOCK = "context_network.layers.{i}.", "encoder.layers.{i}."
_POS = "context_network.pos_conv.conv."
_COMMON = [
    ("mask_embedding", "mask_emb"),
    (_CONV + "conv.", _FS_CONV + "0."),
    ("layer_norm.", "layer_norm."),
    ("post_extract_proj.", "post_extract_proj."),
    (_POS + "bias", "encoder.pos_conv.0.bias"),
    (_POS + "parametrizations.weight.original0", "encoder.pos_conv.0.weight_g"),
    (_POS + "parametrizations.weight.original1", "encoder.pos_conv.0.weight_v"),
    ("context_network.layer_norm.", "encoder.layer_norm."),
    (_BLOCK + "attention_layer_norm.", _FS_BLOCK + "self_attn_layer_norm."),
    (_BLOCK + "attention.", _FS_BLOCK + "self_attn."),
    (_BLOCK + "final_layer_norm.", _FS_BLOCK + "final_layer_norm."),
    (_BLOCK + "ffn.fc", _FS_BLOCK + "fc"),
    ("quantizer.codebook", "quantizer.vars"),
    ("quantizer.logits_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_q."),
    ("final_proj.", "final_proj."),
    # the positional conv's weight norm as torch's parametrization saves it (read only)
    (
        _POS + "parametrizations.weight.original0",
        "encoder.pos_conv.0.parametrizations.weight.original0",
    ),
    (
        _POS + "parametrizations.weight.original1",
        "encoder.pos_conv.0.parametrizations.weight.original1",
    ),
]
# fairseq's conv block: Sequential(conv, dropout, norm, GELU); the layer norm is
# Sequential(TransposeLast, Fp32LayerNorm, TransposeLast), GroupNorm (layer 0 only) is not
NAMES = {
    FeatureEncoderMode.group_norm: Renames([(_CONV + "norm.", _FS_CONV + "2."), *_COMMON]),
    FeatureEncoderMode.layer_norm: Renames([(_CONV + "norm.", _FS_CONV + "2.1."), *_COMMON]),
}


def is_fairseq_checkpoint(obj: dict[str, Any]) -> bool:
    return isinstance(obj, dict) and "model" in obj and ("cfg" in obj or "args" in obj)


# -- fairseq checkpoint -> ours ------------------------------------------------------------


def state_dict_from_fairseq(
    state: dict[str, torch.Tensor], cfg: Wav2Vec2Config, where: str
) -> dict[str, torch.Tensor]:
    """fairseq's parameter names and shapes as ours (strict: every tensor must map)."""
    if any(k.startswith("w2v_encoder.") for k in state):
        raise DataError(
            f"{where}: a fine-tuned model (w2v_encoder.*): it was saved without the quantizer "
            "and projection heads that pretraining needs; use the pretraining checkpoint"
        )
    names = NAMES[cfg.feature_encoder.mode]
    out = {}
    for name, t in state.items():
        try:
            ours = names.to_ours(name)
        except KeyError:
            raise DataError(
                f"{where}: fairseq parameter {name!r} has no counterpart here"
            ) from None
        if ours == "quantizer.codebook":
            t = t.reshape(cfg.quantizer.num_groups, cfg.quantizer.num_vars, -1)
        out[ours] = t
    missing = {"quantizer.codebook", "quantizer.logits_proj.weight", "project_q.weight"} - set(out)
    if missing:
        raise DataError(
            f"{where}: no quantizer weights ({sorted(missing)[0]} missing): a model saved for "
            "fine-tuning or feature extraction only"
        )
    if "post_extract_proj.weight" not in out:  # fairseq omits it when the widths agree
        dim = cfg.context_network.embed_dim
        out["post_extract_proj.weight"] = torch.eye(dim)
        out["post_extract_proj.bias"] = torch.zeros(dim)
    return out


def from_fairseq(obj: dict[str, Any], where: str) -> ModelSource:
    """Our config and weights from a loaded fairseq wav2vec 2.0 pretraining checkpoint (see
    `is_fairseq_checkpoint`); ``where`` (the file) starts every error message."""
    try:
        model, task, criterion = sections(obj)
        if model.get("_name", model.get("arch", "wav2vec2")) not in ("wav2vec2", None):
            raise DataError(f"a {model.get('_name') or model.get('arch')!r} model, not wav2vec2")
        cfg, known = config_from_fairseq(model, task, criterion)
    except DataError as e:
        raise DataError(f"{where}: {str(e).removeprefix(f'{where}: ')}") from None
    state = state_dict_from_fairseq(obj["model"], cfg, where)
    check_weights_fit(cfg, state, where)
    history = obj.get("optimizer_history") or [{}]
    updates = history[-1].get("num_updates") if isinstance(history[-1], dict) else None
    return ModelSource("fairseq", cfg, state, known, int(updates) if updates is not None else None)


# -- ours -> fairseq ------------------------------------------------------------------------


def to_fairseq_checkpoint(model: Wav2Vec2Model, num_updates: int = 0) -> dict[str, Any]:
    """The checkpoint dict fairseq saves since 2021 (``Trainer.state_dict``), for our model."""
    cfg = model.cfg
    names = NAMES[cfg.feature_encoder.mode]
    state = {}
    for name, t in model.state_dict().items():
        if name == "quantizer.codebook":
            t = t.reshape(1, -1, t.shape[-1])  # (G, V, d) -> (1, G*V, d), group-major
        state[names.to_theirs(name)] = t.detach().clone()
    return {
        "args": None,
        "cfg": config_to_fairseq(cfg),
        "model": state,
        "criterion": None,
        "optimizer_history": [
            {
                "criterion_name": "Wav2vecCriterion",
                "optimizer_name": "FairseqAdam",
                "lr_scheduler_state": {"best": None},
                "num_updates": num_updates,
            }
        ],
        "task_state": {},
        "extra_state": {"metrics": {}, "previous_training_time": 0.0},
    }


def export_fairseq(model: Wav2Vec2Model, path: str | Path, num_updates: int = 0) -> Path:
    """Write a fairseq checkpoint file (atomically)."""
    path = Path(path)
    atomic_save(to_fairseq_checkpoint(model, num_updates), path)
    return path
