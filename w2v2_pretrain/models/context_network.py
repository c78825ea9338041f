"""The context network: convolutional relative positional embedding + Transformer."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint


class PositionalConv(nn.Module):
    """Grouped conv over time with weight norm and GELU (fairseq ``conv_pos``).

    An even kernel with ``padding=kernel // 2`` yields one extra frame, trimmed at the end.

    Args:
        dim: model dimension D.
        kernel: fairseq ``conv_pos`` (128).
        groups: fairseq ``conv_pos_groups`` (16).
        dropout: the network's dropout, which scales the initial weights as in fairseq.
    """

    def __init__(self, dim: int, kernel: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        conv = nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups)
        nn.init.normal_(conv.weight, mean=0.0, std=math.sqrt(4 * (1.0 - dropout) / (kernel * dim)))
        nn.init.zeros_(conv.bias)
        self.conv = nn.utils.parametrizations.weight_norm(conv, name="weight", dim=2)
        self.trim = 1 if kernel % 2 == 0 else 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)"""
        y = self.conv(x.transpose(1, 2))
        if self.trim:
            y = y[:, :, : -self.trim]
        return F.gelu(y).transpose(1, 2)


class SelfAttention(nn.Module):
    """Multi-head self-attention through ``F.scaled_dot_product_attention``."""

    def __init__(self, dim: int, num_heads: int, dropout: float) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.dropout = dropout
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """Attend over unpadded frames.

        Shape:
            x: (B, T, D); keep: (B, 1, 1, T) bool, True where a key may be attended.
        """
        B, T, D = x.shape
        H = self.num_heads

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(B, T, H, D // H).transpose(1, 2)  # (B, H, T, D/H)

        y = F.scaled_dot_product_attention(
            heads(self.q_proj(x)),
            heads(self.k_proj(x)),
            heads(self.v_proj(x)),
            attn_mask=keep,
            dropout_p=self.dropout if self.training else 0.0,
        )
        return self.out_proj(y.transpose(1, 2).reshape(B, T, D))


class FeedForward(nn.Module):
    def __init__(self, dim: int, ffn_dim: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, ffn_dim)
        self.fc2 = nn.Linear(ffn_dim, dim)
        self.activation_dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_dropout(F.gelu(self.fc1(x))))


class TransformerBlock(nn.Module):
    """Post-LN (BASE) or pre-LN (LARGE) Transformer block."""

    def __init__(
        self,
        *,
        dim: int,
        ffn_dim: int,
        num_heads: int,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        layer_norm_first: bool,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.attention = SelfAttention(dim, num_heads, attention_dropout)
        self.attention_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.ffn = FeedForward(dim, ffn_dim, activation_dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None) -> torch.Tensor:
        """(B, T, D) -> (B, T, D)"""
        if self.layer_norm_first:
            x = x + self.dropout(self.attention(self.attention_layer_norm(x), keep))
            return x + self.dropout(self.ffn(self.final_layer_norm(x)))
        x = self.attention_layer_norm(x + self.dropout(self.attention(x, keep)))
        return self.final_layer_norm(x + self.dropout(self.ffn(x)))


class ContextNetwork(nn.Module):
    """Positional conv + Transformer blocks with LayerDrop.

    Args (keywords only; fairseq names, BASE / LARGE values):
        dim: ``encoder_embed_dim`` (768 / 1024); num_layers: ``encoder_layers`` (12 / 24);
        ffn_dim: ``encoder_ffn_embed_dim`` (3072 / 4096); num_heads: ``encoder_attention_heads``
        (12 / 16); layer_norm_first: pre-LN (False / True); dropout, attention_dropout,
        activation_dropout (0.1, 0.1, 0.0 / 0.0); layerdrop: ``encoder_layerdrop`` (0.05 / 0.0);
        conv_pos, conv_pos_groups: positional conv kernel and groups (128, 16);
        checkpoint_activations: recompute blocks in backward; eps: LayerNorm epsilon.

    Post-LN (``layer_norm_first=False``, BASE): x + pos -> LayerNorm -> dropout -> blocks.
    Pre-LN (LARGE): x + pos -> dropout -> blocks -> LayerNorm. Padded frames are zeroed before
    the positional conv (so they do not leak into valid frames) and excluded as attention keys.
    """

    def __init__(
        self,
        *,
        dim: int,
        num_layers: int,
        ffn_dim: int,
        num_heads: int,
        layer_norm_first: bool,
        dropout: float,
        attention_dropout: float,
        activation_dropout: float,
        layerdrop: float,
        conv_pos: int,
        conv_pos_groups: int,
        checkpoint_activations: bool = False,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.layer_norm_first = layer_norm_first
        self.layerdrop = layerdrop
        self.checkpoint_activations = checkpoint_activations
        self.pos_conv = PositionalConv(dim, conv_pos, conv_pos_groups, dropout)
        self.layer_norm = nn.LayerNorm(dim, eps=eps)
        self.dropout = nn.Dropout(dropout)
        self.layers = nn.ModuleList(
            TransformerBlock(
                dim=dim,
                ffn_dim=ffn_dim,
                num_heads=num_heads,
                dropout=dropout,
                attention_dropout=attention_dropout,
                activation_dropout=activation_dropout,
                layer_norm_first=layer_norm_first,
                eps=eps,
            )
            for _ in range(num_layers)
        )
        for block in self.layers:  # fairseq init_bert_params
            for m in block.modules():
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, mean=0.0, std=0.02)
                    nn.init.zeros_(m.bias)

    def _block_input(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Padded frames zeroed, relative positions added, post-LN's LayerNorm, dropout; and the
        attention's keep mask (True at frames a query may attend to), or None.

        Shape:
            x: (B, T, D), padding_mask: (B, T) -> (B, T, D), (B, 1, 1, T)
        """
        keep = None
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
            keep = ~padding_mask[:, None, None, :]
        x = x + self.pos_conv(x)
        if not self.layer_norm_first:
            x = self.layer_norm(x)
        return self.dropout(x), keep

    def forward(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> torch.Tensor:
        """Contextualise the (masked) features.

        Args:
            x: latent features projected to D, masked spans replaced by the mask embedding.
            padding_mask: True at padded frames, or None.
            num_layers: stop after this many blocks (default all). For pre-LN the final
                LayerNorm is applied only when all blocks run (as transformers' hidden states).

        Shape:
            x: (B, T, D), padding_mask: (B, T) -> (B, T, D), padded frames zeroed.
        """
        x, keep = self._block_input(x, padding_mask)
        depth = len(self.layers) if num_layers is None else num_layers
        drop = torch.rand(depth) < self.layerdrop if self.training and self.layerdrop else None
        for i, block in enumerate(self.layers[:depth]):
            if drop is not None and drop[i]:
                continue
            if self.checkpoint_activations and self.training:
                x = checkpoint(block, x, keep, use_reentrant=False)
            else:
                x = block(x, keep)
        if self.layer_norm_first and depth == len(self.layers):
            x = self.layer_norm(x)
        if padding_mask is not None:
            x = x.masked_fill(padding_mask[..., None], 0.0)
        return x

    def hidden_states(
        self, x: torch.Tensor, padding_mask: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Every block's view of unmasked features, in one pass (for probing layers).

        Element 0 is the blocks' input (after the positional conv, and for post-LN its
        LayerNorm); element i the output of block i, the last one with pre-LN's final
        LayerNorm: transformers' ``output_hidden_states``. Element i equals ``forward(x,
        padding_mask, num_layers=i)`` for i >= 1. No LayerDrop: every block runs.

        Shape:
            x: (B, T, D), padding_mask: (B, T) -> num_layers + 1 tensors of (B, T, D), padded
            frames zeroed.
        """
        x, keep = self._block_input(x, padding_mask)
        states = [x]
        for block in self.layers:
            states.append(block(states[-1], keep))
        if self.layer_norm_first:
            states[-1] = self.layer_norm(states[-1])
        if padding_mask is not None:
            states = [s.masked_fill(padding_mask[..., None], 0.0) for s in states]
        return states
