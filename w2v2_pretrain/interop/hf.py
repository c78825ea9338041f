"""Hugging Face transformers ``Wav2Vec2ForPreTraining``: export, import and the name mapping.

transformers is an optional extra (``pip install 'w2v2-pretrain[export]'``), imported only here.
Our module names follow the paper; this table is the one place that knows transformers' names.
"""

from __future__ import annotations

from pathlib import Path

import torch

from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.interop.names import Renames
from w2v2_pretrain.model_files import ModelSource
from w2v2_pretrain.models.config import (
    ContextNetworkConfig,
    FeatureEncoderConfig,
    FeatureEncoderMode,
    InputConfig,
    MaskingConfig,
    ObjectiveConfig,
    QuantizerConfig,
    Wav2Vec2Config,
)
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


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict:
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

    fe, mk, cn, q, ob = (
        cfg.feature_encoder,
        cfg.masking,
        cfg.context_network,
        cfg.quantizer,
        cfg.objective,
    )
    return HFConfig(
        hidden_size=cn.embed_dim,
        num_hidden_layers=cn.num_layers,
        num_attention_heads=cn.num_heads,
        intermediate_size=cn.ffn_dim,
        hidden_act="gelu",
        hidden_dropout=cn.dropout,
        activation_dropout=cn.activation_dropout,
        attention_dropout=cn.attention_dropout,
        feat_proj_dropout=cfg.dropout_input,
        feat_quantizer_dropout=cfg.dropout_features,
        layerdrop=cn.layerdrop,
        layer_norm_eps=cfg.layer_norm_eps,
        feat_extract_norm="group" if fe.mode == FeatureEncoderMode.group_norm else "layer",
        feat_extract_activation="gelu",
        conv_dim=[c for c, _, _ in fe.conv_layers],
        conv_kernel=[k for _, k, _ in fe.conv_layers],
        conv_stride=[s for _, _, s in fe.conv_layers],
        conv_bias=fe.conv_bias,
        num_conv_pos_embeddings=cn.conv_pos,
        num_conv_pos_embedding_groups=cn.conv_pos_groups,
        do_stable_layer_norm=cn.layer_norm_first,
        apply_spec_augment=True,
        mask_time_prob=mk.mask_prob,
        mask_time_length=mk.mask_length,
        mask_time_min_masks=mk.min_masks,
        mask_feature_prob=mk.channel_prob,
        mask_feature_length=mk.channel_length,
        num_codevectors_per_group=q.num_vars,
        num_codevector_groups=q.num_groups,
        codevector_dim=q.codevector_dim,
        proj_codevector_dim=cfg.final_dim,
        contrastive_logits_temperature=ob.logit_temp,
        num_negatives=ob.num_negatives,
        diversity_loss_weight=ob.diversity_weight,
    )


def from_hf_config(hf) -> Wav2Vec2Config:
    """Our config from a ``transformers.Wav2Vec2Config`` (fields it lacks keep BASE values)."""
    if getattr(hf, "feat_extract_activation", "gelu") != "gelu" or hf.hidden_act != "gelu":
        raise ConfigError("only GELU activations are supported")
    return Wav2Vec2Config(
        feature_encoder=FeatureEncoderConfig(
            conv_layers=[
                list(c) for c in zip(hf.conv_dim, hf.conv_kernel, hf.conv_stride, strict=True)
            ],
            mode=(
                FeatureEncoderMode.group_norm
                if hf.feat_extract_norm == "group"
                else FeatureEncoderMode.layer_norm
            ),
            conv_bias=hf.conv_bias,
            feature_grad_mult=1.0,  # transformers has no feature_grad_mult
        ),
        masking=MaskingConfig(
            mask_prob=hf.mask_time_prob,
            mask_length=hf.mask_time_length,
            min_masks=hf.mask_time_min_masks,
            channel_prob=hf.mask_feature_prob,
            channel_length=hf.mask_feature_length,
        ),
        context_network=ContextNetworkConfig(
            num_layers=hf.num_hidden_layers,
            embed_dim=hf.hidden_size,
            ffn_dim=hf.intermediate_size,
            num_heads=hf.num_attention_heads,
            layer_norm_first=hf.do_stable_layer_norm,
            dropout=hf.hidden_dropout,
            attention_dropout=hf.attention_dropout,
            activation_dropout=hf.activation_dropout,
            layerdrop=hf.layerdrop,
            conv_pos=hf.num_conv_pos_embeddings,
            conv_pos_groups=hf.num_conv_pos_embedding_groups,
        ),
        quantizer=QuantizerConfig(
            num_groups=hf.num_codevector_groups,
            num_vars=hf.num_codevectors_per_group,
            codevector_dim=hf.codevector_dim,
        ),
        objective=ObjectiveConfig(
            num_negatives=hf.num_negatives,
            logit_temp=hf.contrastive_logits_temperature,
            diversity_weight=hf.diversity_loss_weight,
            feature_penalty_weight=0.0,
        ),
        final_dim=hf.proj_codevector_dim,
        dropout_input=hf.feat_proj_dropout,
        dropout_features=hf.feat_quantizer_dropout,
        layer_norm_eps=hf.layer_norm_eps,
    )


def to_hf_model(model: Wav2Vec2Model):
    """A ``Wav2Vec2ForPreTraining`` with our weights (strict: every tensor maps)."""
    from transformers import Wav2Vec2ForPreTraining

    hf = Wav2Vec2ForPreTraining(to_hf_config(model.cfg))
    hf.load_state_dict(to_hf_state_dict(model.state_dict(), model.cfg), strict=True)
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


# fields a transformers config does not hold (or holds for fine-tuning: its masking)
HF_UNKNOWN = {
    "feature_encoder.feature_grad_mult",
    "objective.feature_penalty_weight",
    "objective.cross_sample_negatives",
    "quantizer.temperature",
    "masking.mask_prob",
    "masking.mask_length",
    "masking.min_masks",
    "masking.channel_prob",
    "masking.channel_length",
}
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
    if (path / "preprocessor_config.json").is_file():
        from transformers import Wav2Vec2FeatureExtractor

        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path))
        cfg.input = InputConfig(sample_rate=fe.sampling_rate, normalize=bool(fe.do_normalize))
    known = set(cfg.flat()) - HF_UNKNOWN
    if not (path / "preprocessor_config.json").is_file():
        known -= {"input.sample_rate", "input.normalize"}
    return ModelSource("transformers", cfg, from_hf_state_dict(hf.state_dict(), cfg), known)
