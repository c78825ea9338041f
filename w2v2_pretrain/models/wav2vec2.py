"""wav2vec 2.0: the parts wired into the self-supervised objective (paper sections 2-3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.context_network import ContextNetwork
from w2v2_pretrain.models.feature_encoder import FeatureEncoder
from w2v2_pretrain.models.masking import compute_channel_mask, compute_span_mask
from w2v2_pretrain.models.noise import Noise
from w2v2_pretrain.models.objective import (
    Wav2Vec2Loss,
    contrastive_accuracy,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    gather_distractors,
    sample_cross_distractors,
    sample_distractors,
)
from w2v2_pretrain.models.quantizer import GumbelQuantizer


@dataclass
class Features:
    """Representations of unmasked audio (for extraction and fine-tuning).

    Shape:
        hidden: (B, T, D) context network output (padded frames zeroed).
        frame_lengths: (B,) valid frames per row.
    """

    hidden: torch.Tensor
    frame_lengths: torch.Tensor


@dataclass
class Wav2Vec2Output:
    """One pretraining forward pass.

    Shape:
        loss: scalars, see `Wav2Vec2Loss`.
        hidden: (B, T, D) context network output for the masked input.
        mask: (B, T) bool, True at masked frames (the same count M in every row).
        frame_lengths: (B,) valid frames per row.
        context: (B, M, final_dim) projected context at masked frames.
        targets: (B, M, final_dim) projected quantized targets at masked frames.
        logits: (B, M, 1 + K) cosine similarity / kappa, positive first.
        codes: (B, M, G) chosen codebook entries at masked frames.
    """

    loss: Wav2Vec2Loss
    hidden: torch.Tensor
    mask: torch.Tensor
    frame_lengths: torch.Tensor
    context: torch.Tensor
    targets: torch.Tensor
    logits: torch.Tensor
    codes: torch.Tensor


class Wav2Vec2Model(nn.Module):
    """Feature encoder, masking, context network, quantizer and objective.

    Build with ``Wav2Vec2Model(preset("base"))``; the parts take explicit arguments and never
    see the config.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        fe, cn, q = cfg.feature_encoder, cfg.context_network, cfg.quantizer
        self.feature_encoder = FeatureEncoder(
            fe.conv_layers, fe.mode, fe.conv_bias, fe.feature_grad_mult
        )
        C = self.feature_encoder.output_dim
        self.layer_norm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(C, cn.embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_embedding = nn.Parameter(torch.empty(cn.embed_dim).uniform_())
        self.context_network = ContextNetwork(
            cn.embed_dim,
            cn.num_layers,
            cn.ffn_dim,
            cn.num_heads,
            cn.layer_norm_first,
            cn.dropout,
            cn.attention_dropout,
            cn.activation_dropout,
            cn.layerdrop,
            cn.conv_pos,
            cn.conv_pos_groups,
            cn.checkpoint_activations,
            cfg.layer_norm_eps,
        )
        self.quantizer = GumbelQuantizer(C, q.num_groups, q.num_vars, q.codevector_dim)
        self.project_q = nn.Linear(q.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cn.embed_dim, cfg.final_dim)

    # -- shared front end ---------------------------------------------------------------------

    def _encode(self, source: torch.Tensor, lengths: torch.Tensor | None):
        """Features, their unnormalised penalty, padding mask and frame lengths."""
        features = self.feature_encoder(source)  # (B, T, C)
        B, T, _ = features.shape
        if lengths is None:
            lengths = torch.full((B,), source.shape[1], device=source.device)
        frames = self.feature_encoder.output_lengths(lengths).clamp(max=T)
        if int(frames.min()) < 1:
            raise ValueError(
                f"an input of {int(lengths.min())} samples is shorter than the feature "
                f"encoder's receptive field ({self.cfg.receptive_field} samples)"
            )
        padding = torch.arange(T, device=source.device)[None, :] >= frames[:, None]
        valid = (~padding).unsqueeze(-1)
        penalty = (features.float().pow(2) * valid).sum() / (valid.sum() * features.shape[-1])
        return features, penalty, padding, frames

    def extract(
        self,
        source: torch.Tensor,
        lengths: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> Features:
        """Context representations of unmasked audio, for downstream use.

        Args:
            num_layers: output of this Transformer block (default: the final output).

        Shape:
            source: (B, L), lengths: (B,) -> hidden (B, T, D)
        """
        features, _, padding, frames = self._encode(source, lengths)
        x = self.post_extract_proj(self.layer_norm(features))
        hidden = self.context_network(x, padding if padding.any() else None, num_layers)
        return Features(hidden, frames)

    # -- pretraining --------------------------------------------------------------------------

    def forward(
        self,
        source: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        temperature: float,
        mask: torch.Tensor | None = None,
        distractors: torch.Tensor | None = None,
        noise: Noise | None = None,
    ) -> Wav2Vec2Output:
        """Mask, contextualise, quantize and score: the pretraining objective.

        Args:
            source: raw audio, zero-padded past ``lengths``.
            lengths: valid samples per row (None: all).
            temperature: Gumbel temperature (a schedule outside sets it).
            mask: frames to mask (default: drawn with the config's span masking).
            distractors: row-local indices of the K distractors per masked frame (default:
                drawn uniformly; with ``cross_sample_negatives`` the flat indices follow).
            noise: source of every random draw (default: torch's global generator).

        Shape:
            source: (B, L), lengths: (B,), mask: (B, T), distractors: (B, M, K)
        """
        cfg, noise = self.cfg, noise or Noise()
        features, penalty, padding, frames = self._encode(source, lengths)
        features = self.layer_norm(features)
        unmasked = self.dropout_features(features)
        x = self.dropout_input(self.post_extract_proj(features))
        B, T, D = x.shape

        if mask is None:
            mk = cfg.masking
            mask = compute_span_mask(frames, T, mk.mask_prob, mk.mask_length, mk.min_masks, noise)
        counts = mask.sum(1)
        if bool((counts != counts[0]).any()) or bool((mask & padding).any()):
            raise ValueError("mask must cover the same number of valid frames in every row")
        M = int(counts[0])
        x = torch.where(mask[..., None], self.mask_embedding.to(x.dtype), x)
        if cfg.masking.channel_prob > 0 and self.training:
            channels = compute_channel_mask(
                B, D, cfg.masking.channel_prob, cfg.masking.channel_length, noise, x.device
            )
            x = x.masked_fill(channels[:, None, :], 0.0)

        hidden = self.context_network(x, padding if padding.any() else None)
        context = self.final_proj(hidden[mask].view(B, M, D))

        q = self.quantizer(unmasked[mask].view(B, M, -1), temperature, noise)
        targets = self.project_q(q.quantized)

        ob = cfg.objective
        within = cross = None
        if distractors is not None:
            within = distractors[..., : ob.num_negatives] if ob.num_negatives else None
            cross = distractors[..., ob.num_negatives :] if ob.cross_sample_negatives else None
        else:
            if ob.num_negatives:
                within = sample_distractors(B, M, ob.num_negatives, noise, x.device)
            if ob.cross_sample_negatives:
                cross = sample_cross_distractors(B, M, ob.cross_sample_negatives, noise, x.device)
        logits = contrastive_logits(
            context, targets, gather_distractors(targets, within, cross), ob.logit_temp
        )

        num_masked = torch.tensor(B * M, device=x.device)
        contrastive = contrastive_loss(logits)
        diversity = diversity_loss(
            q.prob_perplexity, cfg.quantizer.num_groups * cfg.quantizer.num_vars
        )
        total = (
            contrastive
            + ob.diversity_weight * diversity * num_masked
            + ob.feature_penalty_weight * penalty * num_masked
        )
        correct, count = contrastive_accuracy(logits.detach())
        loss = Wav2Vec2Loss(
            total=total,
            contrastive=contrastive,
            diversity=diversity,
            feature_penalty=penalty,
            num_masked=num_masked,
            correct=correct,
            count=count,
            prob_perplexity=q.prob_perplexity.detach(),
            code_perplexity=q.code_perplexity,
            temperature=torch.tensor(float(temperature)),
        )
        return Wav2Vec2Output(
            loss=loss,
            hidden=hidden,
            mask=mask,
            frame_lengths=frames,
            context=context,
            targets=targets,
            logits=logits,
            codes=q.codes,
        )
