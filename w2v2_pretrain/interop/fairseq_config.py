"""fairseq's wav2vec 2.0 settings, both ways: the one table of which of fairseq's config fields is
which of ours (`FIELDS`), what fairseq must say for the model to be this one (`_REQUIRED`), the
training-only variants read and warned about (`_TRAINING_ONLY`), and what export writes.

Works on plain data of either era: the ``cfg`` sections (model, task, criterion) of fairseq
since 2021, or the flat ``args`` namespace of fairseq <= 0.10 (`sections`).
"""

from __future__ import annotations

import argparse
import ast
import copy
import logging
from typing import Any

from omegaconf import DictConfig, OmegaConf

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.models.config import FeatureEncoderMode, Wav2Vec2Config

log = logging.getLogger(__name__)

EXTRACTOR_MODES = {
    "default": FeatureEncoderMode.group_norm,
    "layer_norm": FeatureEncoderMode.layer_norm,
}


def _plain(section: Any) -> dict[str, Any]:
    """A config section as a plain dict (from a dict, a DictConfig or a Namespace)."""
    if section is None:
        return {}
    if isinstance(section, DictConfig):
        section = OmegaConf.to_container(section, resolve=True)
    if isinstance(section, argparse.Namespace):
        section = vars(section)
    if not isinstance(section, dict):
        return {}
    return {k: vars(v) if isinstance(v, argparse.Namespace) else v for k, v in section.items()}


def sections(obj: dict[str, Any]) -> tuple[dict, dict, dict]:
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
    "mask_channel_other": 0,
    "no_mask_channel_overlap": False,
    "mask_channel_min_space": 1,
    "mask_channel_before": False,
}
# what export writes besides FIELDS and loss_weights: the one architecture, masking and
# criterion implemented here, in fairseq's names (every key is a field of fairseq's configs
# since v0.12; fairseq drops what its config does not hold when it loads a checkpoint)
_WRITTEN = {
    "model": {"_name": "wav2vec2", **_REQUIRED, **_TRAINING_ONLY},
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


def _value_from_fairseq(field: str, value: Any, key: str, like: Any) -> Any:
    """fairseq's ``key`` setting as the value of our ``field``, typed as ``like``."""
    if field == "feature_encoder.mode":
        if value not in EXTRACTOR_MODES:
            raise DataError(f"fairseq setting extractor_mode={value!r}: not mapped")
        return EXTRACTOR_MODES[value]
    if isinstance(like, list):  # Python source in older files; from_flat types the items
        return _literal(value, key)
    return type(like)(value)


def _value_to_fairseq(field: str, value: Any) -> Any:
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
            flat[ours] = _value_from_fairseq(ours, value, key, flat[ours])
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
        out[section][key] = _value_to_fairseq(ours, flat[ours])
    out["criterion"]["loss_weights"] = [flat[field] for field in _LOSS_WEIGHTS]
    return out
