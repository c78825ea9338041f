"""wav2vec 2.0: the parts wired into the self-supervised objective (paper sections 2-3)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.context_network import ContextNetwork
from w2v2_pretrain.models.feature_encoder import FeatureEncoder
from w2v2_pretrain.models.masking import MaskPlan, compute_channel_mask, draw_masks
from w2v2_pretrain.models.noise import Noise
from w2v2_pretrain.models.objective import (
    Wav2Vec2Loss,
    contrastive_accuracy,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    gather_distractors,
)
from w2v2_pretrain.models.quantizer import GumbelQuantizer, QuantizerOutput


def gather_frames(x: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """The frames at ``indices`` of each row (no boolean indexing, so no device read-back).

    Shape:
        x: (B, T, C), indices: (B, M) -> (B, M, C)
    """
    return x.gather(1, indices.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


@dataclass
class EncodedAudio:
    """The feature encoder's output for a batch, before masking.

    Shape:
        features: (B, T, C) latent features after the LayerNorm (what is quantized and masked).
        feature_penalty: () mean squared encoder output over valid frames, before the LayerNorm.
        padding: (B, T) bool, True at padded frames; None when no row is padded.
        frame_lengths: (B,) valid frames per row.
    """

    features: torch.Tensor
    feature_penalty: torch.Tensor
    padding: torch.Tensor | None
    frame_lengths: torch.Tensor


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
class LayerFeatures:
    """Every layer's representations of unmasked audio (for probes): layer 0 is the
    Transformer's input, layer i the output of block i.

    Shape:
        hidden: (num_layers + 1, B, T, D) padded frames zeroed.
        frame_lengths: (B,) valid frames per row.
    """

    hidden: torch.Tensor
    frame_lengths: torch.Tensor


@dataclass
class Contextualised:
    """The context network's view of the masked input.

    Shape:
        hidden: (B, T, D) context network output.
        context: (B, M, final_dim) projected output at the masked frames.
    """

    hidden: torch.Tensor
    context: torch.Tensor


@dataclass
class Quantized:
    """The quantization module's targets at the masked frames.

    Shape:
        targets: (B, M, final_dim) projected codevectors.
        codes: see `QuantizerOutput`; the perplexities are its too.
    """

    targets: torch.Tensor
    output: QuantizerOutput


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
    see the config. The pretraining forward runs four named stages: `encode`, `contextualise`,
    `quantize` and `score`.
    """

    def __init__(self, cfg: Wav2Vec2Config) -> None:
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        fe, cn, q = cfg.feature_encoder, cfg.context_network, cfg.quantizer
        self.feature_encoder = FeatureEncoder(
            conv_layers=fe.conv_layers,
            mode=fe.mode,
            conv_bias=fe.conv_bias,
            feature_grad_mult=fe.feature_grad_mult,
        )
        C = self.feature_encoder.output_dim
        self.layer_norm = nn.LayerNorm(C, eps=cfg.layer_norm_eps)
        self.post_extract_proj = nn.Linear(C, cn.embed_dim)
        self.dropout_input = nn.Dropout(cfg.dropout_input)
        self.dropout_features = nn.Dropout(cfg.dropout_features)
        self.mask_embedding = nn.Parameter(torch.empty(cn.embed_dim).uniform_())
        self.context_network = ContextNetwork(
            dim=cn.embed_dim,
            num_layers=cn.num_layers,
            ffn_dim=cn.ffn_dim,
            num_heads=cn.num_heads,
            layer_norm_first=cn.layer_norm_first,
            dropout=cn.dropout,
            attention_dropout=cn.attention_dropout,
            activation_dropout=cn.activation_dropout,
            layerdrop=cn.layerdrop,
            conv_pos=cn.conv_pos,
            conv_pos_groups=cn.conv_pos_groups,
            checkpoint_activations=cn.checkpoint_activations,
            eps=cfg.layer_norm_eps,
        )
        self.quantizer = GumbelQuantizer(
            input_dim=C,
            num_groups=q.num_groups,
            num_vars=q.num_vars,
            codevector_dim=q.codevector_dim,
        )
        self.project_q = nn.Linear(q.codevector_dim, cfg.final_dim)
        self.final_proj = nn.Linear(cn.embed_dim, cfg.final_dim)

    # -- stages -------------------------------------------------------------------------------

    def encode(self, source: torch.Tensor, lengths: torch.Tensor | None = None) -> EncodedAudio:
        """Raw audio to normalised latent features, the feature penalty and the padding.

        Args:
            lengths: valid samples per row; None when no row is padded.

        Shape:
            source: (B, L), lengths: (B,) -> features (B, T, C)
        """
        features = self.feature_encoder(source)  # (B, T, C)
        B, T, _ = features.shape
        if lengths is None:
            penalty = features.float().pow(2).mean()
            frames = torch.full((B,), T, dtype=torch.long, device=source.device)
            return EncodedAudio(self.layer_norm(features), penalty, None, frames)
        if lengths.device.type == "cpu":  # a check that would wait for the GPU is left to the data
            shortest = int(lengths.min())
            if int(self.feature_encoder.output_lengths(lengths.min()[None])) < 1:
                raise ValueError(
                    f"an input of {shortest} samples is shorter than the feature encoder's "
                    f"receptive field ({self.cfg.receptive_field} samples)"
                )
        frames = self.feature_encoder.output_lengths(lengths).clamp(max=T)
        padding = torch.arange(T, device=source.device)[None, :] >= frames[:, None]
        valid = (~padding).unsqueeze(-1)
        penalty = (features.float().pow(2) * valid).sum() / (valid.sum() * features.shape[-1])
        return EncodedAudio(self.layer_norm(features), penalty, padding, frames)

    def draw_masks(
        self, frame_lengths: torch.Tensor, num_frames: int, noise: Noise | None = None
    ) -> MaskPlan:
        """Span mask and distractors from the config, drawn on the CPU (`draw_masks`).

        Shape:
            frame_lengths: (B,) -> see `MaskPlan`
        """
        return draw_masks(self.cfg, frame_lengths, num_frames, noise)

    def contextualise(
        self, encoded: EncodedAudio, plan: MaskPlan, noise: Noise | None = None
    ) -> Contextualised:
        """Mask spans with the learned embedding and run the context network.

        Shape:
            encoded.features: (B, T, C) -> hidden (B, T, D), context (B, M, final_dim)
        """
        x = self.dropout_input(self.post_extract_proj(encoded.features))
        B, T, D = x.shape
        x = torch.where(plan.mask[..., None], self.mask_embedding.to(x.dtype), x)
        mk = self.cfg.masking
        if mk.channel_prob > 0 and self.training:
            channels = compute_channel_mask(
                B, D, mk.channel_prob, mk.channel_length, noise, x.device
            )
            x = x.masked_fill(channels[:, None, :], 0.0)
        hidden = self.context_network(x, encoded.padding)
        return Contextualised(hidden, self.final_proj(gather_frames(hidden, plan.indices)))

    def quantize(
        self,
        encoded: EncodedAudio,
        plan: MaskPlan,
        temperature: float,
        noise: Noise | None = None,
    ) -> Quantized:
        """Quantize the unmasked features at the masked frames (the targets).

        Shape:
            encoded.features: (B, T, C) -> targets (B, M, final_dim)
        """
        unmasked = self.dropout_features(gather_frames(encoded.features, plan.indices))
        q = self.quantizer(unmasked, temperature, noise)
        return Quantized(self.project_q(q.quantized), q)

    def score(
        self,
        encoded: EncodedAudio,
        contextualised: Contextualised,
        quantized: Quantized,
        plan: MaskPlan,
    ) -> tuple[Wav2Vec2Loss, torch.Tensor]:
        """Contrastive + diversity + feature penalty (fairseq's criterion), and the logits.

        Shape:
            -> loss (scalars), logits (B, M, 1 + K)
        """
        cfg, ob = self.cfg, self.cfg.objective
        context, targets, q = contextualised.context, quantized.targets, quantized.output
        B, M = plan.indices.shape
        within = plan.distractors[..., : ob.num_negatives] if ob.num_negatives else None
        cross = plan.distractors[..., ob.num_negatives :] if ob.cross_sample_negatives else None
        same = (gather_distractors(q.codes, within, cross) == q.codes.unsqueeze(2)).all(-1)
        logits = contrastive_logits(context, targets, within, cross, ob.logit_temp, same)
        num_masked = torch.full((), B * M, dtype=torch.long, device=logits.device)
        contrastive = contrastive_loss(logits)
        diversity = diversity_loss(q.prob_perplexity, cfg.quantizer.num_codevectors)
        total = (
            contrastive
            + ob.diversity_weight * diversity * num_masked
            + ob.feature_penalty_weight * encoded.feature_penalty * num_masked
        )
        correct, count = contrastive_accuracy(logits.detach())
        loss = Wav2Vec2Loss(
            total=total,
            contrastive=contrastive,
            diversity=diversity,
            feature_penalty=encoded.feature_penalty,
            num_masked=num_masked,
            correct=correct,
            count=count,
            prob_perplexity=q.prob_perplexity.detach(),
            code_perplexity=q.code_perplexity,
            identical_distractors=same.float().mean(),
        )
        return loss, logits

    # -- uses ---------------------------------------------------------------------------------

    def extract(
        self,
        source: torch.Tensor,
        lengths: torch.Tensor | None = None,
        num_layers: int | None = None,
    ) -> Features:
        """Context representations of unmasked audio, for downstream use.

        Args:
            lengths: valid samples per row (None: no row is padded).
            num_layers: output of this Transformer block (default: the final output).

        Shape:
            source: (B, L), lengths: (B,) -> hidden (B, T, D)
        """
        encoded = self.encode(source, lengths)
        x = self.post_extract_proj(encoded.features)
        hidden = self.context_network(x, encoded.padding, num_layers)
        return Features(hidden, encoded.frame_lengths)

    def layer_features(
        self, source: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> LayerFeatures:
        """Every layer's representations of unmasked audio, in one pass.

        Shape:
            source: (B, L), lengths: (B,) -> hidden (num_layers + 1, B, T, D)
        """
        encoded = self.encode(source, lengths)
        x = self.post_extract_proj(encoded.features)
        states = self.context_network.hidden_states(x, encoded.padding)
        return LayerFeatures(torch.stack(states), encoded.frame_lengths)

    def forward(
        self,
        source: torch.Tensor,
        lengths: torch.Tensor | None = None,
        *,
        temperature: float,
        plan: MaskPlan | None = None,
        noise: Noise | None = None,
    ) -> Wav2Vec2Output:
        """Mask, contextualise, quantize and score: the pretraining objective.

        Args:
            source: raw audio, zero-padded past ``lengths``.
            lengths: valid samples per row (None: no row is padded).
            temperature: Gumbel temperature (a schedule outside sets it).
            plan: masked frames and distractors (default: drawn from the config on the CPU;
                pass one drawn ahead, e.g. by the data loader, to keep the step free of
                host-device synchronisation).
            noise: source of the random draws (default: torch's global generator).

        Shape:
            source: (B, L), lengths: (B,)
        """
        encoded = self.encode(source, lengths)
        if plan is None:
            plan = self.draw_masks(encoded.frame_lengths, encoded.features.shape[1], noise)
        elif plan.mask.device != source.device:
            plan = plan.to(source.device)
        contextualised = self.contextualise(encoded, plan, noise)
        quantized = self.quantize(encoded, plan, temperature, noise)
        loss, logits = self.score(encoded, contextualised, quantized, plan)
        return Wav2Vec2Output(
            loss=loss,
            hidden=contextualised.hidden,
            mask=plan.mask,
            frame_lengths=encoded.frame_lengths,
            context=contextualised.context,
            targets=quantized.targets,
            logits=logits,
            codes=quantized.output.codes,
        )
