"""The convolutional feature encoder: raw audio X -> latent speech representations Z."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from w2v2_pretrain.models.config import FeatureEncoderMode


def frame_lengths(lengths: torch.Tensor, conv_layers: list[list[int]]) -> torch.Tensor:
    """Map sample lengths to frame lengths: ``(L - kernel) // stride + 1`` per conv.

    Shape:
        lengths: (B,) samples -> (B,) frames (0 where a clip is shorter than the receptive field).
    """
    out = lengths.long()
    for _, kernel, stride in conv_layers:
        out = torch.div(out - kernel, stride, rounding_mode="floor") + 1
    return out.clamp(min=0)


class _GradMultiply(torch.autograd.Function):
    """Identity forward; gradient scaled by ``scale`` backward (fairseq ``GradMultiply``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class ConvLayer(nn.Module):
    """Conv1d -> optional norm -> GELU.

    Args:
        group_norm: GroupNorm with one group per channel (BASE's first conv).
        layer_norm: LayerNorm over channels (every conv of LARGE's encoder).
    """

    def __init__(
        self,
        *,
        in_dim: int,
        out_dim: int,
        kernel: int,
        stride: int,
        bias: bool,
        group_norm: bool = False,
        layer_norm: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.channels_last_norm = layer_norm
        if group_norm:
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif layer_norm:
            self.norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, L) -> (B, C_out, L')."""
        x = self.conv(x)
        if self.norm is not None:  # statistics in float32 under autocast, as fairseq's Fp32*Norm
            if self.channels_last_norm:
                x = self.norm(x.transpose(1, 2).float()).type_as(x).transpose(1, 2)
            else:
                x = self.norm(x.float()).type_as(x)
        return F.gelu(x)


class FeatureEncoder(nn.Module):
    """Seven strided convs on 16 kHz audio (about 49 frames/s for BASE).

    Args:
        conv_layers: (channels, kernel, stride) per layer; fairseq ``conv_feature_layers``.
        mode: ``group_norm`` (GroupNorm on the first conv only, BASE) or ``layer_norm`` (LARGE).
        conv_bias: bias in the convs (BASE False, LARGE True).
        feature_grad_mult: gradient scale reaching the encoder (BASE 0.1; 0 = frozen).
    """

    def __init__(
        self,
        *,
        conv_layers: list[list[int]],
        mode: FeatureEncoderMode = FeatureEncoderMode.group_norm,
        conv_bias: bool = False,
        feature_grad_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv_specs = [list(c) for c in conv_layers]
        self.feature_grad_mult = feature_grad_mult
        layer_norm = mode == FeatureEncoderMode.layer_norm
        layers, in_dim = [], 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            layers.append(
                ConvLayer(
                    in_dim=in_dim,
                    out_dim=dim,
                    kernel=kernel,
                    stride=stride,
                    bias=conv_bias,
                    group_norm=not layer_norm and i == 0,
                    layer_norm=layer_norm,
                )
            )
            in_dim = dim
        self.conv_layers = nn.ModuleList(layers)
        self.output_dim = in_dim

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        return frame_lengths(lengths, self.conv_specs)

    def forward(self, source: torch.Tensor) -> torch.Tensor:
        """Raw audio to latent features (before the LayerNorm; the feature penalty reads this).

        Shape:
            source: (B, L) -> (B, T, C)
        """
        if self.feature_grad_mult == 0:
            with torch.no_grad():
                return self._convs(source)
        x = self._convs(source)
        if self.feature_grad_mult != 1.0 and x.requires_grad:
            x = _GradMultiply.apply(x, self.feature_grad_mult)
        return x

    def _convs(self, source: torch.Tensor) -> torch.Tensor:
        x = source.unsqueeze(1)  # (B, 1, L)
        for layer in self.conv_layers:
            x = layer(x)
        return x.transpose(1, 2)  # (B, T, C)
