"""fairseq wav2vec 2.0 checkpoints built from facts about fairseq's layout (fairseq itself no
longer installs on Python 3.11): ``Wav2Vec2Model``'s modules (conv blocks ``Sequential(conv,
dropout, norm, GELU)``, ``encoder.pos_conv.0`` with weight norm over dim 2, ``quantizer.vars``
of shape (1, G*V, d)), its config field names, and the three ways fairseq has saved them (an
argparse namespace; a pickled omegaconf DictConfig; a plain ``cfg`` dict)."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

CONV = [(128, 10, 5)] + [(128, 3, 2)] * 4 + [(128, 2, 2)] * 2
E, LAYERS, FFN, G, V, LATENT, FINAL, K_POS, POS_GROUPS = 96, 2, 192, 2, 16, 64, 48, 16, 8


@dataclass(frozen=True)
class Shape:
    """The widths of a fairseq model, by fairseq's option names (default: the small model the
    tests here use); its seven convs have BASE's kernels and strides."""

    conv_channels: int = 128
    encoder_layers: int = LAYERS
    encoder_embed_dim: int = E
    encoder_ffn_embed_dim: int = FFN
    encoder_attention_heads: int = 4
    latent_groups: int = G
    latent_vars: int = V
    latent_dim: int = LATENT  # 0: final_dim
    final_dim: int = FINAL
    conv_pos: int = K_POS
    conv_pos_groups: int = POS_GROUPS

    @property
    def convs(self) -> list[tuple[int, int, int]]:
        c = self.conv_channels
        return [(c, 10, 5)] + [(c, 3, 2)] * 4 + [(c, 2, 2)] * 2

    @property
    def conv_feature_layers(self) -> str:
        """As fairseq's command line wrote it."""
        c = self.conv_channels
        return f"[({c}, 10, 5)] + [({c}, 3, 2)] * 4 + [({c},2,2)] * 2"

    @property
    def codevector_dim(self) -> int:
        return self.latent_dim or self.final_dim

    def fields(self) -> dict:
        fields = dataclasses.asdict(self)
        del fields["conv_channels"]
        return fields | {"conv_feature_layers": self.conv_feature_layers}


SMALL = Shape()


def fairseq_state(
    mode: str, conv_bias: bool, weight_norm: str, seed: int = 0, shape: Shape = SMALL
) -> dict:
    """A state dict with fairseq ``Wav2Vec2Model``'s names and shapes (random values)."""
    CONV, E, LAYERS, FFN = (
        shape.convs,
        shape.encoder_embed_dim,
        shape.encoder_layers,
        shape.encoder_ffn_embed_dim,
    )
    G, V, LATENT, FINAL = (
        shape.latent_groups,
        shape.latent_vars,
        shape.codevector_dim,
        shape.final_dim,
    )
    K_POS, POS_GROUPS = shape.conv_pos, shape.conv_pos_groups
    gen = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=gen) * 0.2

    sd = {"mask_emb": r(E)}
    in_dim = 1
    for i, (c, k, _) in enumerate(CONV):
        sd[f"feature_extractor.conv_layers.{i}.0.weight"] = r(c, in_dim, k)
        if conv_bias:
            sd[f"feature_extractor.conv_layers.{i}.0.bias"] = r(c)
        if mode == "layer_norm":  # Sequential(TransposeLast, Fp32LayerNorm, TransposeLast)
            sd[f"feature_extractor.conv_layers.{i}.2.1.weight"] = 1 + r(c)
            sd[f"feature_extractor.conv_layers.{i}.2.1.bias"] = r(c)
        elif i == 0:  # Fp32GroupNorm on the first conv only
            sd["feature_extractor.conv_layers.0.2.weight"] = 1 + r(c)
            sd["feature_extractor.conv_layers.0.2.bias"] = r(c)
        in_dim = c
    sd["post_extract_proj.weight"], sd["post_extract_proj.bias"] = r(E, in_dim), r(E)
    sd["quantizer.vars"] = r(1, G * V, LATENT // G)
    sd["quantizer.weight_proj.weight"] = r(G * V, in_dim)
    sd["quantizer.weight_proj.bias"] = r(G * V)
    sd["project_q.weight"], sd["project_q.bias"] = r(FINAL, LATENT), r(FINAL)
    sd["encoder.pos_conv.0.bias"] = r(E)
    g, v = 1 + r(1, 1, K_POS).abs(), r(E, E // POS_GROUPS, K_POS)
    if weight_norm == "legacy":  # nn.utils.weight_norm(conv, dim=2), what fairseq saves
        sd["encoder.pos_conv.0.weight_g"], sd["encoder.pos_conv.0.weight_v"] = g, v
    else:  # torch's parametrization, as a model re-saved with newer torch names it
        sd["encoder.pos_conv.0.parametrizations.weight.original0"] = g
        sd["encoder.pos_conv.0.parametrizations.weight.original1"] = v
    for i in range(LAYERS):
        p = f"encoder.layers.{i}."
        for proj in ("k_proj", "v_proj", "q_proj", "out_proj"):
            sd[p + f"self_attn.{proj}.weight"], sd[p + f"self_attn.{proj}.bias"] = r(E, E), r(E)
        sd[p + "self_attn_layer_norm.weight"], sd[p + "self_attn_layer_norm.bias"] = 1 + r(E), r(E)
        sd[p + "fc1.weight"], sd[p + "fc1.bias"] = r(FFN, E), r(FFN)
        sd[p + "fc2.weight"], sd[p + "fc2.bias"] = r(E, FFN), r(E)
        sd[p + "final_layer_norm.weight"], sd[p + "final_layer_norm.bias"] = 1 + r(E), r(E)
    sd["encoder.layer_norm.weight"], sd["encoder.layer_norm.bias"] = 1 + r(E), r(E)
    sd["layer_norm.weight"], sd["layer_norm.bias"] = 1 + r(in_dim), r(in_dim)
    sd["final_proj.weight"], sd["final_proj.bias"] = r(FINAL, E), r(FINAL)
    return sd


def model_fields(mode: str, conv_bias: bool, shape: Shape = SMALL) -> dict:
    """fairseq ``Wav2Vec2Config`` fields of the model above (fairseq's names)."""
    return shape.fields() | {
        "_name": "wav2vec2",
        "extractor_mode": "default" if mode == "group" else "layer_norm",
        "activation_fn": "gelu",
        "dropout": 0.05,
        "attention_dropout": 0.07,
        "activation_dropout": 0.0,
        "encoder_layerdrop": 0.02,
        "dropout_input": 0.1,
        "dropout_features": 0.1,
        "layer_norm_first": mode == "layer_norm",
        "conv_bias": conv_bias,
        "logit_temp": 0.1,
        "quantize_targets": True,
        "quantize_input": False,
        "same_quantizer": False,
        "target_glu": False,
        "feature_grad_mult": 0.1,
        "mask_length": 10,
        "mask_prob": 0.65,
        "mask_selection": "static",
        "mask_other": 0.0,
        "no_mask_overlap": False,
        "mask_channel_prob": 0.0,
        "num_negatives": 100,
        "cross_sample_negatives": 0,
        "codebook_negatives": 0,
        "latent_temp": [2.0, 0.5, 0.999995],
    }


def fairseq_checkpoint(
    form: str,
    mode: str = "group",
    conv_bias: bool = False,
    weight_norm: str = "legacy",
    shape: Shape = SMALL,
) -> dict:
    """The whole file, in one of the three ways fairseq has saved it."""
    model = model_fields(mode, conv_bias, shape)
    task = {
        "_name": "audio_pretraining",
        "data": "/data",
        "sample_rate": 16000,
        "normalize": mode == "layer_norm",
        "max_sample_size": 250000,
    }
    criterion = {
        "_name": "wav2vec",
        "infonce": True,
        "loss_weights": [0.1, 10.0],
        "log_keys": ["prob_perplexity", "code_perplexity", "temp"],
    }
    ckpt = {
        "model": fairseq_state(mode, conv_bias, weight_norm, shape=shape),
        "optimizer_history": [
            {
                "criterion_name": "Wav2vecCriterion",
                "optimizer_name": "FP16Optimizer",
                "lr_scheduler_state": {"best": 6.5},
                "num_updates": 400_000,
            }
        ],
        "extra_state": {
            "train_iterator": {"epoch": 45, "iterations_in_epoch": 0},
            "val_loss": np.float64(2.15),
            "previous_training_time": 1.2e5,
        },
    }
    if form == "args":  # fairseq <= 0.10: one flat namespace, some values as Python source
        flat = {k: v for k, v in model.items() if k != "_name"} | {
            "arch": "wav2vec2",
            "task": "audio_pretraining",
            "criterion": "wav2vec",
            "latent_temp": "(2,0.5,0.999995)",
            "loss_weights": "[0.1, 10]",
            "infonce": True,
            "normalize": task["normalize"],
            "sample_rate": 16000,
            "max_sample_size": 250000,
            "lr": [0.0005],
            "max_update": 400_000,
        }
        return ckpt | {"args": argparse.Namespace(**flat), "last_optimizer_state": {}}
    cfg = {"common": {"fp16": True}, "model": model, "task": task, "criterion": criterion}
    if form == "dictconfig":  # Oct 2020 - Mar 2021: the omegaconf object itself
        from omegaconf import OmegaConf

        return ckpt | {"args": None, "cfg": OmegaConf.create(cfg), "task_state": {}}
    return ckpt | {"args": None, "cfg": cfg, "criterion": None, "task_state": {}}
