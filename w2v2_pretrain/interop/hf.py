"""Hugging Face transformers ``Wav2Vec2ForPreTraining``: export, import and the name mapping.

transformers is an optional extra (``pip install 'w2v2-pretrain[export]'``), imported only here.
Our module names follow the paper; this table is the one place that knows transformers' names.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from w2v2_pretrain.errors import ConfigError
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
_OURS_BLOCK, _HF_BLOCK = "context_network.layers.{i}.", "wav2vec2.encoder.layers.{i}."
_OURS_CONV, _HF_CONV = (
    "feature_encoder.conv_layers.{i}.",
    "wav2vec2.feature_extractor.conv_layers.{i}.",
)
_RENAMES = [
    (_OURS_CONV + "conv.", _HF_CONV + "conv."),
    (_OURS_CONV + "norm.", _HF_CONV + "layer_norm."),
    ("layer_norm.", "wav2vec2.feature_projection.layer_norm."),
    ("post_extract_proj.", "wav2vec2.feature_projection.projection."),
    ("mask_embedding", "wav2vec2.masked_spec_embed"),
    ("context_network.pos_conv.conv.", "wav2vec2.encoder.pos_conv_embed.conv."),
    ("context_network.layer_norm.", "wav2vec2.encoder.layer_norm."),
    (_OURS_BLOCK + "attention.", _HF_BLOCK + "attention."),
    (_OURS_BLOCK + "attention_layer_norm.", _HF_BLOCK + "layer_norm."),
    (_OURS_BLOCK + "ffn.fc1.", _HF_BLOCK + "feed_forward.intermediate_dense."),
    (_OURS_BLOCK + "ffn.fc2.", _HF_BLOCK + "feed_forward.output_dense."),
    (_OURS_BLOCK + "final_layer_norm.", _HF_BLOCK + "final_layer_norm."),
    ("quantizer.codebook", "quantizer.codevectors"),
    ("quantizer.logits_proj.", "quantizer.weight_proj."),
    ("project_q.", "project_q."),
    ("final_proj.", "project_hid."),
]


def _rename(name: str, to_hf: bool) -> str:
    """Map one parameter name to transformers' (``to_hf``) or back; KeyError if unknown."""
    for ours, theirs in _RENAMES:
        src, dst = (ours, theirs) if to_hf else (theirs, ours)
        pattern = "^" + re.escape(src).replace(re.escape("{i}"), r"(\d+)")
        new, n = re.subn(pattern, dst.replace("{i}", r"\1"), name)
        if n:
            return new
    raise KeyError(name)


def to_hf_state_dict(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict:
    """Our state dict with transformers' names and shapes."""
    out = {}
    for name, t in state.items():
        if name == "quantizer.codebook":
            t = t.reshape(1, -1, t.shape[-1])  # (G, V, d) -> (1, G*V, d)
        out[_rename(name, True)] = t
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor], cfg: Wav2Vec2Config) -> dict:
    """transformers' state dict with our names and shapes (heads it has beyond ours dropped)."""
    out = {}
    for name, t in state.items():
        try:
            ours = _rename(name, False)
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


def load(path: str | Path) -> Wav2Vec2Model:
    """Our model from a transformers directory (ours or any ``Wav2Vec2ForPreTraining``)."""
    from transformers import Wav2Vec2ForPreTraining

    hf = Wav2Vec2ForPreTraining.from_pretrained(str(path))
    cfg = from_hf_config(hf.config)
    if (Path(path) / "preprocessor_config.json").is_file():
        from transformers import Wav2Vec2FeatureExtractor

        fe = Wav2Vec2FeatureExtractor.from_pretrained(str(path))
        cfg.input = InputConfig(sample_rate=fe.sampling_rate, normalize=bool(fe.do_normalize))
    model = Wav2Vec2Model(cfg)
    model.load_state_dict(from_hf_state_dict(hf.state_dict(), cfg), strict=True)
    return model.eval()
