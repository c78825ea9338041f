"""Hugging Face transformers ``Wav2Vec2ForPreTraining``: export, import and the name mapping.

transformers is an optional extra (``pip install 'w2v2-pretrain[export]'``), imported only here.
Our module names follow the paper; the tables here, of parameter names (`NAMES`) and of config
fields (`FIELDS`, both directions and what a directory records), are the one place that knows
transformers' names.
"""

from __future__ import annotations

from pathlib import Path

import torch

from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.interop.names import Renames
from w2v2_pretrain.model_files import ModelSource
from w2v2_pretrain.models.config import FeatureEncoderMode, InputConfig, Wav2Vec2Config
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Model

# (our prefix, transformers' prefix); {i} stands for a layer index
_BLOCK, _HF_BLOCK = "context_network.layers.{i}.", "wav2vec2.encoder.layers.{i}."
_CONV, _HF_CONV = "feature_encoder.conv_layers.{i}.", "wav2vec2.feature_extractor.conv_layers.{i}."
NAMES = Renames(
    [
        (_CONV + "conv.", _HF_CONV + "conv."),
        (_CONV + "norm.", _HF_CONV + "layer_norm."),
        ("layer_norm.", "wav2vec2.feature_projection.layer_norm."),
        ("post_extract_proj.", "wav2vec2.feature_projection.projection."),
        ("mask_embedding", "wav2vec2.masked_spec_embed"),
        ("context_network.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
        ("context_network.layer_norm.", "wav2vec2.encoder.layer_norm."),
        (_BLOCK + "attention.", _HF_BLOCK + "attention."),
        (_BLOCK + "attention_layer_norm.", _HF_BLOCK + "layer_norm."),
        (_BLOCK + "ffn.fc1.", _HF_BLOCK + "feed_forward.intermediate_dense."),
        (_BLOCK + "ffn.fc2.", _HF_BLOCK + "feed_forward.output_dense."),
        (_BLOCK + "final_layer_norm.", _HF_BLOCK + "final_layer_norm."),
        ("quantizer.codebook", "quantizer.codevectors"),
        ("quantizer.logits_proj.", "quantizer.weight_proj."),
        ("project_q.", "project_q."),
        ("final_proj.", "project_hid."),
    ]
)


# (transformers' config field, our dotted field), read and written alike. The special cases:
# the encoder's kind (``feat_extract_norm``) and its convs (three lists, `_CONVS`).
FIELDS = [
    ("conv_bias", "feature_encoder.conv_bias"),
    ("mask_time_prob", "masking.mask_prob"),
    ("mask_time_length", "masking.mask_length"),
    ("mask_time_min_masks", "masking.min_masks"),
    ("mask_feature_prob", "masking.channel_prob"),
    ("mask_feature_length", "masking.channel_length"),
    ("num_hidden_layers", "context_network.num_layers"),
    ("hidden_size", "context_network.embed_dim"),
    ("intermediate_size", "context_network.ffn_dim"),
    ("num_attention_heads", "context_network.num_heads"),
    ("do_stable_layer_norm", "context_network.layer_norm_first"),
    ("hidden_dropout", "context_network.dropout"),
    ("attention_dropout", "context_network.attention_dropout"),
    ("activation_dropout", "context_network.activation_dropout"),
    ("layerdrop", "context_network.layerdrop"),
    ("num_conv_pos_embeddings", "context_network.conv_pos"),
    ("num_conv_pos_embedding_groups", "context_network.conv_pos_groups"),
    ("num_codevector_groups", "quantizer.num_groups"),
    ("num_codevectors_per_group", "quantizer.num_vars"),
    ("codevector_dim", "quantizer.codevector_dim"),
    ("num_negatives", "objective.num_negatives"),
    ("contrastive_logits_temperature", "objective.logit_temp"),
    ("diversity_loss_weight", "objective.diversity_weight"),
    ("proj_codevector_dim", "final_dim"),
    ("feat_proj_dropout", "dropout_input"),
    ("feat_quantizer_dropout", "dropout_features"),
    ("layer_norm_eps", "layer_norm_eps"),
]
_CONVS = ("conv_dim", "conv_kernel", "conv_stride")  # feature_encoder.conv_layers, by column
_NORMS = {FeatureEncoderMode.group_norm: "group", FeatureEncoderMode.layer_norm: "layer"}
# what export writes besides FIELDS: the activations and the masking implemented here
_WRITTEN = {"hidden_act": "gelu", "feat_extract_activation": "gelu", "apply_spec_augment": True}
# settings transformers has no field for, read as what its model does: no gradient scaling
# into the encoder, no feature penalty
_IMPLIED = {"feature_encoder.feature_grad_mult": 1.0, "objective.feature_penalty_weight": 0.0}
# what a transformers directory records of our fields: FIELDS but the masking (its values
# are fine-tuning's: mask_time_prob defaults to 0.05), the encoder's kind and convs, and
# checkpoint_activations, which transformers saves no switch for: read as off
RECORDED = {ours for _, ours in FIELDS if not ours.startswith("masking.")} | {
    "feature_encoder.conv_layers",
    "feature_encoder.mode",
    "context_network.checkpoint_activations",
}
_INPUT = {"input.sample_rate", "input.normalize"}  # recorded by preprocessor_config.json


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict:
    """Our state dict with transformers' names and shapes."""
    out = {}
    for name, t in state.items():
        if name == "quantizer.codebook":
            t = t.reshape(1, -1, t.shape[-1])  # (G, V, d) -> (1, G*V, d)
        out[NAMES.to_theirs(name)] = t
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict:
    """transformers' state dict with our names and shapes (heads it has beyond ours dropped)."""
    out = {}
    for name, t in state.items():
        try:
            ours = NAMES.to_ours(name)
        except KeyError:
            continue
        if ours == "quantizer.codebook":
            t = t.reshape(cfg.quantizer.num_groups, cfg.quantizer.num_vars, -1)
        out[ours] = t
    return out


def to_hf_config(cfg: Wav2Vec2Config):
    """The equivalent ``transformers.Wav2Vec2Config``."""
    from transformers import Wav2Vec2Config as HFConfig

    flat = cfg.flat()
    columns = zip(*cfg.feature_encoder.conv_layers, strict=True)
    return HFConfig(
        **_WRITTEN,
        **{theirs: flat[ours] for theirs, ours in FIELDS},
        **{name: list(column) for name, column in zip(_CONVS, columns, strict=True)},
        feat_extract_norm=_NORMS[FeatureEncoderMode(cfg.feature_encoder.mode)],
    )


def from_hf_config(hf) -> Wav2Vec2Config:
    """Our config from a ``transformers.Wav2Vec2Config`` (fields it lacks keep BASE values)."""
    if getattr(hf, "feat_extract_activation", "gelu") != "gelu" or hf.hidden_act != "gelu":
        raise ConfigError("only GELU activations are supported")
    flat = Wav2Vec2Config().flat() | _IMPLIED
    flat |= {ours: getattr(hf, theirs) for theirs, ours in FIELDS}
    flat["feature_encoder.conv_layers"] = [
        list(c) for c in zip(*(getattr(hf, name) for name in _CONVS), strict=True)
    ]
    flat["feature_encoder.mode"] = (
        FeatureEncoderMode.group_norm
        if hf.feat_extract_norm == "group"
        else FeatureEncoderMode.layer_norm
    )
    return Wav2Vec2Config.from_flat(flat)


def to_hf_model(model: Wav2Vec2Model):
    """A ``Wav2Vec2ForPreTraining`` with our weights (strict: every tensor maps)."""
    from transformers import Wav2Vec2ForPreTraining

    hf = Wav2Vec2ForPreTraining(to_hf_config(model.cfg))
    hf.load_state_dict(to_hf_state_dict(model.state_dict()), strict=True)
    return hf.eval()


def feature_extractor(cfg: Wav2Vec2Config):
    """transformers' ``Wav2Vec2FeatureExtractor`` for the model's input contract: its rate,
    its normalisation, and an attention mask only for the layer-norm encoder (the group-norm
    encoder must see no padding, as transformers' own conversion sets it)."""
    from transformers import Wav2Vec2FeatureExtractor

    return Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=cfg.input.sample_rate,
        padding_value=0.0,
        do_normalize=cfg.input.normalize,
        return_attention_mask=cfg.feature_encoder.mode == FeatureEncoderMode.layer_norm,
    )


def export(model: Wav2Vec2Model, out_dir: str | Path) -> Path:
    """Write a directory that ``Wav2Vec2ForPreTraining.from_pretrained`` loads, with the
    ``preprocessor_config.json`` that ``AutoFeatureExtractor.from_pretrained`` reads."""
    out_dir = Path(out_dir)
    to_hf_model(model).save_pretrained(out_dir)
    feature_extractor(model.cfg).save_pretrained(out_dir)
    return out_dir


_HEADS = ("quantizer.", "project_q.", "project_hid.")


def read_hf(path: str | Path) -> ModelSource:
    """Config and weights of a transformers ``Wav2Vec2ForPreTraining`` directory (with its
    ``preprocessor_config.json``, if any, as the input contract)."""
    from transformers import AutoConfig, Wav2Vec2ForPreTraining

    path = Path(path)
    hf_cfg = AutoConfig.from_pretrained(str(path))
    if hf_cfg.model_type != "wav2vec2":
        raise DataError(f"{path}: a {hf_cfg.model_type!r} model, not wav2vec2")
    if getattr(hf_cfg, "add_adapter", False):
        raise DataError(f"{path}: adapter layers (add_adapter=true) cannot be mapped")
    try:
        cfg = from_hf_config(hf_cfg)
    except ConfigError as e:
        raise DataError(f"{path}: {e}") from None
    hf, info = Wav2Vec2ForPreTraining.from_pretrained(str(path), output_loading_info=True)
    heads = sorted(k for k in info["missing_keys"] if k.startswith(_HEADS))
    if heads:
        kind = ", ".join(hf_cfg.architectures or []) or "a model"
        raise DataError(
            f"{path}: no quantizer weights ({heads[0]} missing): {kind} saved for fine-tuning "
            "or feature extraction; continued pretraining and export need a "
            "Wav2Vec2ForPreTraining checkpoint"
        )
    known = set(RECORDED)
    if (path / "preprocessor_config.json").is_file():
        from transformers import Wav2Vec2FeatureExtractor

        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path))
        cfg.input = InputConfig(sample_rate=fe.sampling_rate, normalize=bool(fe.do_normalize))
        known |= _INPUT
    return ModelSource("transformers", cfg, from_hf_state_dict(hf.state_dict(), cfg), known)
