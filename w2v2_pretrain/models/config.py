"""Typed configuration of wav2vec 2.0 (the presets built from it are in presets.py, the
plain-data plumbing in fields.py).

Every field names its fairseq option (``Wav2Vec2Config`` in ``fairseq/models/wav2vec``) and its
BASE / LARGE value. `Wav2Vec2Config.validate` reports the first bad field by its dotted name.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.models.fields import (
    Check,
    build,
    flatten,
    raise_first_failure,
    to_plain,
    unflatten,
)


def conv_stack(channels: int) -> list[list[int]]:
    """BASE's seven convs, [(C,10,5)] + [(C,3,2)]*4 + [(C,2,2)]*2, as fresh lists (no layer
    shares a list with another, so editing one never edits the others)."""
    return (
        [[channels, 10, 5]]
        + [[channels, 3, 2] for _ in range(4)]
        + [[channels, 2, 2] for _ in range(2)]
    )


class FeatureEncoderMode(Choice):
    """Normalisation in the feature encoder (fairseq ``extractor_mode``)."""

    group_norm = "group_norm"
    """GroupNorm on the first conv only (fairseq ``default``; BASE)."""
    layer_norm = "layer_norm"
    """LayerNorm over channels after every conv (LARGE)."""


@dataclass(kw_only=True)
class InputConfig:
    """What the model expects of its audio: recorded with the weights in every checkpoint and
    model state file, applied by extraction and written to transformers'
    ``preprocessor_config.json`` by export."""

    sample_rate: int = 16_000
    """Samples per second; fairseq task ``sample_rate``. 16000."""

    normalize: bool = False
    """Zero mean and unit variance per utterance before the feature encoder; fairseq task
    ``normalize``. BASE False, LARGE True."""

    def checks(self) -> list[Check]:
        return [Check(self.sample_rate > 0, "sample_rate", "must be positive")]


@dataclass(kw_only=True)
class FeatureEncoderConfig:
    """The convolutional feature encoder f: X -> Z (paper section 2)."""

    conv_layers: list[list[int]] = field(default_factory=lambda: conv_stack(512))
    """[channels, kernel, stride] per conv; fairseq ``conv_feature_layers``. BASE and LARGE:
    [(512,10,5)] + [(512,3,2)]*4 + [(512,2,2)]*2: 20 ms stride, 25 ms receptive field."""

    mode: FeatureEncoderMode = FeatureEncoderMode.group_norm
    """``group_norm`` (GroupNorm on the first conv only; fairseq ``extractor_mode=default``, BASE)
    or ``layer_norm`` (LayerNorm after every conv; LARGE)."""

    conv_bias: bool = False
    """Bias in the convs; fairseq ``conv_bias``. BASE False, LARGE True."""

    feature_grad_mult: float = 0.1
    """Scale of the gradient reaching the encoder; 0 disables it. fairseq ``feature_grad_mult``.
    BASE 0.1, LARGE 1.0."""

    def __post_init__(self) -> None:
        self.mode = FeatureEncoderMode.parse(self.mode, "model.feature_encoder.mode")

    def checks(self) -> list[Check]:
        return [
            Check(len(self.conv_layers) > 0, "conv_layers", "must not be empty"),
            Check(
                all(len(c) == 3 and min(c) > 0 for c in self.conv_layers),
                "conv_layers",
                "each layer is (channels, kernel, stride) > 0",
            ),
            Check(self.feature_grad_mult >= 0, "feature_grad_mult", "must be >= 0"),
        ]


@dataclass(kw_only=True)
class MaskingConfig:
    """Span masking of the latent features before the context network (paper section 3.1)."""

    mask_prob: float = 0.65
    """Probability of each frame starting a span (p); fairseq ``mask_prob``. BASE/LARGE 0.65."""

    mask_length: int = 10
    """Span length in frames (M); fairseq ``mask_length``. BASE/LARGE 10."""

    min_masks: int = 2
    """Minimum spans per utterance; fairseq ``apply_mask(min_masks=2)``."""

    channel_prob: float = 0.0
    """Probability of each channel starting a masked channel span; fairseq
    ``mask_channel_prob``. 0 in pretraining."""

    channel_length: int = 10
    """Channel span length; fairseq ``mask_channel_length``."""

    def checks(self) -> list[Check]:
        return [
            Check(
                0 <= self.mask_prob < 1, "mask_prob", f"must be in [0, 1), got {self.mask_prob}"
            ),
            Check(self.mask_length >= 1, "mask_length", "must be >= 1"),
            Check(self.min_masks >= 0, "min_masks", "must be >= 0"),
            Check(0 <= self.channel_prob < 1, "channel_prob", "must be in [0, 1)"),
            Check(self.channel_length >= 1, "channel_length", "must be >= 1"),
        ]


@dataclass(kw_only=True)
class ContextNetworkConfig:
    """Relative positional conv + Transformer g: Z -> C (paper section 2)."""

    num_layers: int = 12
    """Transformer blocks; fairseq ``encoder_layers``. BASE 12, LARGE 24."""

    embed_dim: int = 768
    """Model dimension; fairseq ``encoder_embed_dim``. BASE 768, LARGE 1024."""

    ffn_dim: int = 3072
    """Inner FFN dimension; fairseq ``encoder_ffn_embed_dim``. BASE 3072, LARGE 4096."""

    num_heads: int = 12
    """Attention heads; fairseq ``encoder_attention_heads``. BASE 12 (the paper says 8),
    LARGE 16."""

    layer_norm_first: bool = False
    """Pre-LN blocks and a final LayerNorm (LARGE) instead of post-LN blocks with the LayerNorm
    before the first block (BASE); fairseq ``layer_norm_first``."""

    dropout: float = 0.1
    """Dropout after attention / FFN and on the block input; fairseq ``dropout``. BASE 0.1,
    LARGE (LibriVox) 0.0."""

    attention_dropout: float = 0.1
    """Dropout on attention probabilities; fairseq ``attention_dropout``. BASE 0.1, LARGE 0.0."""

    activation_dropout: float = 0.0
    """Dropout after the FFN activation; fairseq ``activation_dropout``. 0.0."""

    layerdrop: float = 0.05
    """Probability of skipping each block in training; fairseq ``encoder_layerdrop``. BASE 0.05,
    LARGE (LibriVox) 0.0."""

    conv_pos: int = 128
    """Kernel of the positional conv; fairseq ``conv_pos``. 128."""

    conv_pos_groups: int = 16
    """Groups of the positional conv; fairseq ``conv_pos_groups``. 16."""

    checkpoint_activations: bool = False
    """Recompute each block in backward to save memory; fairseq ``checkpoint_activations``."""

    def checks(self) -> list[Check]:
        return [
            Check(self.num_layers >= 1, "num_layers", "must be >= 1"),
            Check(
                self.embed_dim % self.num_heads == 0,
                "num_heads",
                f"embed_dim {self.embed_dim} is not divisible by num_heads {self.num_heads}",
            ),
            Check(
                self.embed_dim % self.conv_pos_groups == 0,
                "conv_pos_groups",
                f"embed_dim {self.embed_dim} is not divisible by {self.conv_pos_groups} groups",
            ),
            Check(self.conv_pos >= 1, "conv_pos", "must be >= 1"),
            Check(0 <= self.layerdrop < 1, "layerdrop", "must be in [0, 1)"),
            *(
                Check(0 <= getattr(self, p) < 1, p, "must be in [0, 1)")
                for p in ("dropout", "attention_dropout", "activation_dropout")
            ),
        ]


@dataclass(kw_only=True)
class QuantizerConfig:
    """Gumbel-softmax product quantizer (paper section 2, 'Quantization module')."""

    num_groups: int = 2
    """Codebooks G; fairseq ``latent_groups``. 2."""

    num_vars: int = 320
    """Entries per codebook V; fairseq ``latent_vars``. 320."""

    codevector_dim: int = 256
    """Width of a concatenated codevector (each group has codevector_dim / G); fairseq
    ``latent_dim`` (0 there means ``final_dim``). BASE 256, LARGE 768."""

    temperature: list[float] = field(default_factory=lambda: [2.0, 0.5, 0.999995])
    """Gumbel temperature (start, floor, decay per update): max(start * decay^step, floor);
    fairseq ``latent_temp``. BASE (2, 0.5, 0.999995), LARGE (2, 0.1, 0.999995)."""

    @property
    def num_codevectors(self) -> int:
        """G x V, the entries of all codebooks (what the diversity loss and the code
        perplexity are measured against)."""
        return self.num_groups * self.num_vars

    def temperature_at(self, step: int) -> float:
        start, floor, decay = self.temperature
        return max(start * decay**step, floor)

    def checks(self) -> list[Check]:
        t = self.temperature
        return [
            Check(self.num_groups >= 1 and self.num_vars >= 2, "", "needs G >= 1 and V >= 2"),
            Check(
                self.codevector_dim % self.num_groups == 0,
                "codevector_dim",
                f"{self.codevector_dim} is not divisible by num_groups {self.num_groups}",
            ),
            Check(
                len(t) == 3 and t[0] >= t[1] > 0 and 0 < t[2] <= 1,
                "temperature",
                "must be (start, floor, decay) with start >= floor > 0 and 0 < decay <= 1",
            ),
        ]


@dataclass(kw_only=True)
class ObjectiveConfig:
    """Contrastive + diversity + feature-penalty objective (paper sections 3.2, 4.2)."""

    num_negatives: int = 100
    """Distractors K from other masked frames of the same utterance; fairseq
    ``num_negatives``. 100."""

    cross_sample_negatives: int = 0
    """Extra distractors drawn from masked frames of any utterance in the batch; fairseq
    ``cross_sample_negatives``. 0."""

    logit_temp: float = 0.1
    """Temperature kappa dividing the cosine similarities; fairseq ``logit_temp``. 0.1."""

    diversity_weight: float = 0.1
    """Weight alpha of the diversity loss; fairseq criterion ``loss_weights[0]``. 0.1."""

    feature_penalty_weight: float = 10.0
    """Weight of the L2 penalty on the encoder output; fairseq ``loss_weights[1]``. BASE 10,
    LARGE (LibriVox) 0."""

    @property
    def num_distractors(self) -> int:
        """K, the distractors of each masked frame: from its own utterance, then from the
        batch."""
        return self.num_negatives + self.cross_sample_negatives

    def checks(self) -> list[Check]:
        return [
            Check(self.num_distractors >= 1, "num_negatives", "need at least one distractor"),
            Check(self.logit_temp > 0, "logit_temp", "must be > 0"),
            Check(
                self.diversity_weight >= 0 and self.feature_penalty_weight >= 0,
                "",
                "loss weights must be >= 0",
            ),
        ]


@dataclass(kw_only=True)
class Wav2Vec2Config:
    """The whole model: parts plus the projections between them, and its input contract."""

    input: InputConfig = field(default_factory=InputConfig)
    feature_encoder: FeatureEncoderConfig = field(default_factory=FeatureEncoderConfig)
    masking: MaskingConfig = field(default_factory=MaskingConfig)
    context_network: ContextNetworkConfig = field(default_factory=ContextNetworkConfig)
    quantizer: QuantizerConfig = field(default_factory=QuantizerConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)

    final_dim: int = 256
    """Dimension both the context and the codevectors are projected to before the cosine
    similarity; fairseq ``final_dim``. BASE 256, LARGE 768."""

    dropout_input: float = 0.1
    """Dropout on the projected features entering the context network; fairseq
    ``dropout_input``. BASE 0.1, LARGE (LibriVox) 0.0."""

    dropout_features: float = 0.1
    """Dropout on the features entering the quantizer; fairseq ``dropout_features``. BASE 0.1,
    LARGE (LibriVox) 0.0."""

    layer_norm_eps: float = 1e-5
    """Epsilon of every LayerNorm."""

    # -- derived ------------------------------------------------------------------------------

    @property
    def receptive_field(self) -> int:
        """Samples one output frame sees (400 = 25 ms for BASE)."""
        rf = 1
        for _, kernel, stride in reversed(self.feature_encoder.conv_layers):
            rf = (rf - 1) * stride + kernel
        return rf

    @property
    def stride(self) -> int:
        """Samples between frames (320 = 20 ms for BASE)."""
        s = 1
        for _, _, stride in self.feature_encoder.conv_layers:
            s *= stride
        return s

    # -- (de)serialisation --------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """Plain data (choices as their names): what checkpoints store."""
        return to_plain(self)

    def flat(self) -> dict[str, Any]:
        """Every field as ``{"context_network.dropout": 0.1, ...}`` (choices as names)."""
        return flatten(self.to_dict())

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> Wav2Vec2Config:
        """The inverse of `flat` (validated names, as `from_dict`)."""
        return cls.from_dict(unflatten(flat))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Wav2Vec2Config:
        """Build from nested plain data (a checkpoint, a Hydra node); unknown keys are errors."""
        return build(cls, dict(data), "model", _PARTS, _COERCE)

    def checks(self) -> list[Check]:
        """The rules on the fields of the whole model (each part has its own)."""
        return [
            Check(self.final_dim >= 1, "final_dim", "must be >= 1"),
            *(
                Check(0 <= getattr(self, p) < 1, p, "must be in [0, 1)")
                for p in ("dropout_input", "dropout_features")
            ),
        ]

    def validate(self) -> Wav2Vec2Config:
        """Check ranges and consistency; raise `ConfigError` naming the field. Returns self."""
        parts = [(f"{name}.", getattr(self, name)) for name in _PARTS] + [("", self)]
        raise_first_failure(parts, "model")
        return self


_PARTS = {
    f.name: f.default_factory
    for f in dataclasses.fields(Wav2Vec2Config)
    if f.default_factory is not dataclasses.MISSING
}
"""The parts of the model config by field name (each part's default factory is its class)."""
_COERCE = {
    "conv_layers": lambda layers: [[int(v) for v in layer] for layer in layers],
    "temperature": lambda t: [float(v) for v in t],
}
"""Lists that YAML or JSON may hand over with other number types."""
