"""The convolutional feature encoder: raw audio X -> latent speech representations Z."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


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
    """Conv1d -> optional norm (GroupNorm per channel or LayerNorm over channels) -> GELU."""

    def __init__(
        self, in_dim: int, out_dim: int, kernel: int, stride: int, bias: bool, norm: str | None
    ) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_dim, out_dim, kernel, stride=stride, bias=bias)
        nn.init.kaiming_normal_(self.conv.weight)
        self.norm_kind = norm
        if norm == "group":
            self.norm = nn.GroupNorm(out_dim, out_dim, affine=True)
        elif norm == "layer":
            self.norm = nn.LayerNorm(out_dim, elementwise_affine=True)
        else:
            self.norm = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, L) -> (B, C_out, L')."""
        x = self.conv(x)
        if self.norm_kind == "group":
            x = self.norm(x.float()).type_as(x)  # statistics in float32 under autocast
        elif self.norm_kind == "layer":
            x = self.norm(x.transpose(1, 2).float()).type_as(x).transpose(1, 2)
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
        conv_layers: list[list[int]],
        mode: str = "group_norm",
        conv_bias: bool = False,
        feature_grad_mult: float = 1.0,
    ) -> None:
        super().__init__()
        self.conv_specs = list(conv_layers)
        self.feature_grad_mult = feature_grad_mult
        layers, in_dim = [], 1
        for i, (dim, kernel, stride) in enumerate(conv_layers):
            norm = "layer" if mode == "layer_norm" else ("group" if i == 0 else None)
            layers.append(ConvLayer(in_dim, dim, kernel, stride, conv_bias, norm))
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
