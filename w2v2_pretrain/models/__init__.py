"""wav2vec 2.0 in pure PyTorch (no Lightning, no Hydra): one module per concept in the paper."""

from w2v2_pretrain.models.config import (
    ContextNetworkConfig,
    FeatureEncoderConfig,
    InputConfig,
    MaskingConfig,
    ObjectiveConfig,
    QuantizerConfig,
    Wav2Vec2Config,
)
from w2v2_pretrain.models.presets import preset
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Model, Wav2Vec2Output

__all__ = [
    "ContextNetworkConfig",
    "FeatureEncoderConfig",
    "InputConfig",
    "MaskingConfig",
    "ObjectiveConfig",
    "QuantizerConfig",
    "Wav2Vec2Config",
    "Wav2Vec2Model",
    "Wav2Vec2Output",
    "preset",
]
