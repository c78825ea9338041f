"""fairseq wav2vec 2.0 pretraining checkpoints, both ways, without fairseq installed.

Reads the three forms fairseq has saved (``wav2vec_small.pt``-style ``args`` namespaces of
fairseq <= 0.10; a pickled omegaconf ``DictConfig``, Oct 2020 - Mar 2021; a plain ``cfg`` dict
since), with either weight-norm naming of the positional conv; writes the current form, which
fairseq's ``checkpoint_utils.load_model_ensemble_and_task`` loads. The file itself is loaded by
`w2v2_pretrain.model_files.load_file` (weights-only, with exactly the classes these files hold
allow-listed); this module works on the loaded object. Its tables, of parameter names
(`NAMES`) and of config fields (`FIELDS`, both directions), are the one place that knows
fairseq's names.
"""

from __future__ import annotations

import ast
import copy
import logging
from pathlib import Path
from typing import Any

import torch

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.interop.names import Renames
from w2v2_pretrain.model_files import ModelSource, atomic_save, check_weights_fit
from w2v2_pretrain.models.config import FeatureEncoderMode, Wav2Vec2Config
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Model

log = logging.getLogger(__name__)

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
EXTRACTOR_MODES = {
    "default": FeatureEncoderMode.group_norm,
    "layer_norm": FeatureEncoderMode.layer_norm,
}


def is_fairseq_checkpoint(obj: dict[str, Any]) -> bool:
    return isinstance(obj, dict) and "model" in obj and ("cfg" in obj or "args" in obj)


def _plain(section: Any) -> dict[str, Any]:
    """A config section as a plain dict (from a dict, a DictConfig or a Namespace)."""
    import argparse

    from omegaconf import DictConfig, OmegaConf

    if section is None:
        return {}
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, argparse.Namespace):
        section = vars(section)
    if not isinstance(section, dict):
        return {}
    return {k: vars(v) if isinstance(v, argparse.Namespace) else v for k, v in section.items()}


def _sections(obj: dict[str, Any]) -> tuple[dict, dict, dict]:
    """(model, task, criterion) settings of either era: ``cfg`` sections, or the flat
    ``args`` namespace of fairseq <= 0.10 (one namespace holds all three)."""
    if obj.get("cfg") is not None:
        cfg = _plain(obj["cfg"])
        return _plain(cfg.get("model")), _plain(cfg.get("task")), _plain(cfg.get("criterion"))
    if obj.get("args") is not None:
        flat = _plain(obj["args"])
        return flat, flat, flat
    raise DataError("neither cfg nor args: not a fairseq training checkpoint")


def _literal(value: Any, name: str) -> Any:
    """fairseq stores some settings as Python source it eval()s ("[(512, 10, 5)] * 2",
    "(2,0.5,0.999995)"); read literals, lists, tuples, + and * of them, nothing else."""
    if not isinstance(value, str):
        return value

    def walk(node: ast.AST) -> Any:
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)):
            return node.value
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -walk(node.operand)
        if isinstance(node, (ast.List, ast.Tuple)):
            items = [walk(e) for e in node.elts]
            return items if isinstance(node, ast.List) else tuple(items)
        if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Mult)):
            left, right = walk(node.left), walk(node.right)
            return left + right if isinstance(node.op, ast.Add) else left * right
        raise ValueError(ast.dump(node))

    try:
        return walk(ast.parse(value, mode="eval").body)
    except (SyntaxError, ValueError, TypeError):
        raise DataError(
            f"fairseq setting {name}={value!r}: not a literal this reader takes"
        ) from None


# -- config fields, both ways ------------------------------------------------------------

# (fairseq's section.key, our dotted field): what is read and written alike. A None value
# counts as unset. conv_feature_layers and latent_temp may be Python source (see `_literal`);
# extractor_mode names the encoder kind (EXTRACTOR_MODES); a final_dim or latent_dim of 0
# means the width before it. criterion.loss_weights holds two of our fields (see below).
FIELDS = [
    ("model.extractor_mode", "feature_encoder.mode"),
    ("model.conv_feature_layers", "feature_encoder.conv_layers"),
    ("model.conv_bias", "feature_encoder.conv_bias"),
    ("model.feature_grad_mult", "feature_encoder.feature_grad_mult"),
    ("model.mask_prob", "masking.mask_prob"),
    ("model.mask_length", "masking.mask_length"),
    ("model.mask_channel_prob", "masking.channel_prob"),
    ("model.mask_channel_length", "masking.channel_length"),
    ("model.encoder_layers", "context_network.num_layers"),
    ("model.encoder_embed_dim", "context_network.embed_dim"),
    ("model.encoder_ffn_embed_dim", "context_network.ffn_dim"),
    ("model.encoder_attention_heads", "context_network.num_heads"),
    ("model.layer_norm_first", "context_network.layer_norm_first"),
    ("model.dropout", "context_network.dropout"),
    ("model.attention_dropout", "context_network.attention_dropout"),
    ("model.activation_dropout", "context_network.activation_dropout"),
    ("model.encoder_layerdrop", "context_network.layerdrop"),
    ("model.conv_pos", "context_network.conv_pos"),
    ("model.conv_pos_groups", "context_network.conv_pos_groups"),
    ("model.latent_groups", "quantizer.num_groups"),
    ("model.latent_vars", "quantizer.num_vars"),
    ("model.latent_dim", "quantizer.codevector_dim"),
    ("model.latent_temp", "quantizer.temperature"),
    ("model.num_negatives", "objective.num_negatives"),
    ("model.cross_sample_negatives", "objective.cross_sample_negatives"),
    ("model.logit_temp", "objective.logit_temp"),
    ("model.final_dim", "final_dim"),
    ("model.dropout_input", "dropout_input"),
    ("model.dropout_features", "dropout_features"),
    ("task.sample_rate", "input.sample_rate"),
    ("task.normalize", "input.normalize"),
]
_LOSS_WEIGHTS = ("objective.diversity_weight", "objective.feature_penalty_weight")
# fairseq's default where a file may leave a field out and it differs from ours
_FAIRSEQ_DEFAULTS = {"feature_encoder.feature_grad_mult": 1.0}

# settings whose other values change the architecture or the objective: not mapped
_REQUIRED = {
    "quantize_targets": True,
    "quantize_input": False,
    "same_quantizer": False,
    "target_glu": False,
    "activation_fn": "gelu",
    "layer_type": "transformer",
    "pos_conv_depth": 1,
    "quantizer_depth": 1,
    "codebook_negatives": 0,
    "negatives_from_everywhere": False,
}
# masking variants that only change training: read, warned about, not reproduced
_TRAINING_ONLY = {
    "mask_selection": "static",
    "mask_other": 0,
    "no_mask_overlap": False,
    "mask_min_space": 1,
    "require_same_masks": True,
    "mask_dropout": 0.0,
    "mask_channel_selection": "static",
    "mask_channel_before": False,
}
# what export writes besides FIELDS and loss_weights: the settings of the one architecture,
# masking and criterion implemented here, in fairseq's names
_WRITTEN = {
    "model": {
        "_name": "wav2vec2",
        "activation_fn": "gelu",
        "quantize_targets": True,
        "quantize_input": False,
        "same_quantizer": False,
        "target_glu": False,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_min_space": 1,
        "mask_channel_selection": "static",
        "mask_channel_other": 0.0,
        "no_mask_channel_overlap": False,
        "mask_channel_min_space": 1,
        "negatives_from_everywhere": False,
        "codebook_negatives": 0,
    },
    "task": {"_name": "audio_pretraining", "data": "", "enable_padding": False},
    "criterion": {
        "_name": "wav2vec",
        "infonce": True,
        "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
    },
}


def _check_mappable(model: dict, criterion: dict) -> None:
    """Refuse architectures not implemented here; warn of training-only differences."""
    for key, want in _REQUIRED.items():
        if (
            key in model
            and model[key] != want
            and not (key == "quantize_targets" and model[key] is None)
        ):
            raise DataError(
                f"fairseq setting {key}={model[key]!r}: this architecture cannot be mapped "
                f"(only {key}={want!r})"
            )
    for key, want in _TRAINING_ONLY.items():
        if key in model and model[key] not in (want, None):
            log.warning(
                "fairseq setting %s=%r is not reproduced here (masking uses %r)",
                key,
                model[key],
                want,
            )
    if criterion.get("infonce") is False:
        log.warning(
            "fairseq criterion infonce=false (binary cross-entropy): training here uses InfoNCE"
        )


def _ours(field: str, value: Any, key: str, like: Any) -> Any:
    """fairseq's ``key`` setting as the value of our ``field``, typed as ``like``."""
    if field == "feature_encoder.mode":
        if value not in EXTRACTOR_MODES:
            raise DataError(f"fairseq setting extractor_mode={value!r}: not mapped")
        return EXTRACTOR_MODES[value]
    if isinstance(like, list):  # Python source in older files; from_flat types the items
        return _literal(value, key)
    return type(like)(value)


def _theirs(field: str, value: Any) -> Any:
    """The value of our ``field`` as fairseq writes it."""
    if field == "feature_encoder.mode":
        return {mode: name for name, mode in EXTRACTOR_MODES.items()}[FeatureEncoderMode(value)]
    if field == "feature_encoder.conv_layers":
        return "[" + ", ".join(f"({c}, {k}, {s})" for c, k, s in value) + "]"
    return value


def config_from_fairseq(
    model: dict, task: dict, criterion: dict
) -> tuple[Wav2Vec2Config, set[str]]:
    """Our config from fairseq's model/task/criterion settings, and the fields they set."""
    _check_mappable(model, criterion)
    sections = {"model": model, "task": task, "criterion": criterion}
    flat = Wav2Vec2Config().flat() | _FAIRSEQ_DEFAULTS
    known = {"feature_encoder.mode"}  # left out: fairseq's default, group norm
    for theirs, ours in FIELDS:
        section, key = theirs.split(".")
        value = sections[section].get(key)
        if value is not None:
            flat[ours] = _ours(ours, value, key, flat[ours])
            known.add(ours)
    # fairseq's 0: the width of what feeds it
    flat["final_dim"] = flat["final_dim"] or flat["context_network.embed_dim"]
    flat["quantizer.codevector_dim"] = flat["quantizer.codevector_dim"] or flat["final_dim"]
    if "loss_weights" in criterion:
        # fairseq: no weights means no extra losses at all
        weights = [*(_literal(criterion["loss_weights"], "loss_weights") or []), 0.0, 0.0]
        flat |= {field: float(w) for field, w in zip(_LOSS_WEIGHTS, weights[:2], strict=True)}
        known |= set(_LOSS_WEIGHTS)
    return Wav2Vec2Config.from_flat(flat).validate(), known


def config_to_fairseq(cfg: Wav2Vec2Config) -> dict[str, Any]:
    """fairseq's ``cfg`` (model, task, criterion sections) for our config: the fields of
    fairseq's ``Wav2Vec2Config``, ``AudioPretrainingConfig`` and ``Wav2VecCriterionConfig``."""
    out = copy.deepcopy(_WRITTEN)
    flat = cfg.flat()
    for theirs, ours in FIELDS:
        section, key = theirs.split(".")
        out[section][key] = _theirs(ours, flat[ours])
    out["criterion"]["loss_weights"] = [flat[field] for field in _LOSS_WEIGHTS]
    return out


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
        model, task, criterion = _sections(obj)
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
