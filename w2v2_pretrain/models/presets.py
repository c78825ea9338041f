"""The model presets: the paper's BASE and LARGE, the XLS-R sizes, and a tiny one for CPUs.

Each preset is a function returning a fresh `Wav2Vec2Config`, built by editing another
(``large`` edits ``base``, the XLS-R sizes edit ``large``), as fairseq2's architecture registry
does. `PRESETS` is what ``model=NAME`` chooses from (configs/__init__.py registers each).
"""

from __future__ import annotations

from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.models.config import (
    ContextNetworkConfig,
    FeatureEncoderConfig,
    FeatureEncoderMode,
    InputConfig,
    ObjectiveConfig,
    QuantizerConfig,
    Wav2Vec2Config,
    conv_stack,
)


def base() -> Wav2Vec2Config:
    """BASE (95.0M parameters): the paper's and fairseq's LibriSpeech recipe."""
    return Wav2Vec2Config()


def large() -> Wav2Vec2Config:
    """LARGE (317M parameters), as fairseq's LibriVox recipe."""
    cfg = base()
    cfg.input = InputConfig(normalize=True)
    cfg.feature_encoder = FeatureEncoderConfig(
        mode=FeatureEncoderMode.layer_norm, conv_bias=True, feature_grad_mult=1.0
    )
    cfg.context_network = ContextNetworkConfig(
        num_layers=24,
        embed_dim=1024,
        ffn_dim=4096,
        num_heads=16,
        layer_norm_first=True,
        dropout=0.0,
        attention_dropout=0.0,
        layerdrop=0.0,
    )
    cfg.quantizer = QuantizerConfig(codevector_dim=768, temperature=[2.0, 0.1, 0.999995])
    cfg.objective = ObjectiveConfig(feature_penalty_weight=0.0)
    cfg.final_dim = 768
    cfg.dropout_input = cfg.dropout_features = 0.0
    return cfg


def tiny() -> Wav2Vec2Config:
    """A few M parameters with BASE's geometry (49 frames/s): tests and the CPU demo."""
    cfg = base()
    cfg.feature_encoder = FeatureEncoderConfig(conv_layers=conv_stack(128), feature_grad_mult=1.0)
    cfg.context_network = ContextNetworkConfig(
        num_layers=4,
        embed_dim=256,
        ffn_dim=1024,
        num_heads=4,
        conv_pos=32,
        conv_pos_groups=8,
        layerdrop=0.0,
        dropout=0.1,
        attention_dropout=0.1,
    )
    cfg.quantizer = QuantizerConfig(num_groups=2, num_vars=64, codevector_dim=128)
    cfg.final_dim = 128
    return cfg


def _xlsr(*, num_layers: int, embed_dim: int, ffn_dim: int, final_dim: int) -> Wav2Vec2Config:
    """An XLS-R size (Babu et al. 2021, table 1; the released transformers configs): LARGE's
    kind of model (layer-norm encoder with conv bias, pre-LN, 16 heads, positional conv 128 in
    16 groups, 2 x 320 codevectors, normalized input) at another depth and width, its
    codevectors as wide as ``final_dim`` (transformers' ``codevector_dim`` =
    ``proj_codevector_dim``; fairseq ``latent_dim`` 0). The training settings are LARGE's."""
    cfg = large()
    cn = cfg.context_network
    cn.num_layers, cn.embed_dim, cn.ffn_dim = num_layers, embed_dim, ffn_dim
    cfg.final_dim = cfg.quantizer.codevector_dim = final_dim
    return cfg


def xlsr_300m() -> Wav2Vec2Config:
    """XLS-R 300M (317.4M parameters, LARGE's architecture; ``facebook/wav2vec2-xls-r-300m``):
    24 x 1024, FFN 4096, final_dim 768."""
    return _xlsr(num_layers=24, embed_dim=1024, ffn_dim=4096, final_dim=768)


def xlsr_1b() -> Wav2Vec2Config:
    """XLS-R 1B (965.5M parameters; ``facebook/wav2vec2-xls-r-1b``): 48 x 1280, FFN 5120,
    final_dim 1024."""
    return _xlsr(num_layers=48, embed_dim=1280, ffn_dim=5120, final_dim=1024)


def xlsr_2b() -> Wav2Vec2Config:
    """XLS-R 2B (2162.9M parameters; ``facebook/wav2vec2-xls-r-2b``): 48 x 1920, FFN 7680
    (heads of 120), final_dim 1024."""
    return _xlsr(num_layers=48, embed_dim=1920, ffn_dim=7680, final_dim=1024)


PRESETS = {
    "tiny": tiny,
    "base": base,
    "large": large,
    "xlsr_300m": xlsr_300m,
    "xlsr_1b": xlsr_1b,
    "xlsr_2b": xlsr_2b,
}


def preset(name: str) -> Wav2Vec2Config:
    """One of `PRESETS`: ``tiny``, ``base``, ``large``, ``xlsr_300m``, ``xlsr_1b``,
    ``xlsr_2b``."""
    if name not in PRESETS:
        raise ConfigError(f"model preset {name!r} unknown; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()
