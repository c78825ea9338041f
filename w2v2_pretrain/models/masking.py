"""Span masking of latent frames (paper section 3.1; fairseq ``compute_mask_indices``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.noise import Noise
from w2v2_pretrain.models.objective import sample_cross_distractors, sample_distractors


@dataclass
class MaskPlan:
    """The masked frames of a batch and the distractors of each, decided on the host.

    The model gathers with these indices, so it never reads a device value back to learn a
    shape (boolean indexing such as ``hidden[mask]`` would wait for the GPU on every step).

    Shape:
        mask: (B, T) bool, True at masked frames; the same number M in every row.
        indices: (B, M) int64 frame of each masked frame, ascending.
        distractors: (B, M, K) int64; the first ``num_negatives`` index the row's own M masked
            frames, the rest (``cross_sample_negatives``) the batch's B * M masked frames.
    """

    mask: torch.Tensor
    indices: torch.Tensor
    distractors: torch.Tensor

    @property
    def num_masked(self) -> int:
        """M, masked frames per row (known on the host)."""
        return self.indices.shape[1]

    def to(self, device: torch.device | str, non_blocking: bool = False) -> MaskPlan:
        return MaskPlan(
            *(
                t.to(device, non_blocking=non_blocking)
                for t in (self.mask, self.indices, self.distractors)
            )
        )

    def pin_memory(self) -> MaskPlan:
        return MaskPlan(
            self.mask.pin_memory(), self.indices.pin_memory(), self.distractors.pin_memory()
        )


def _top_per_row(scores: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """(B, W) bool: True at the ``counts[b]`` highest scores of row b."""
    order = torch.argsort(scores, dim=1, descending=True)
    ranks = torch.arange(scores.shape[1], device=scores.device).expand_as(scores)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    return chosen.scatter_(1, order, ranks < counts[:, None])


def compute_span_mask(
    lengths: torch.Tensor,
    num_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int = 0,
    noise: Noise | None = None,
    require_same_masks: bool = True,
) -> torch.Tensor:
    """Choose spans to mask, only inside each row's valid frames, without a loop over frames.

    As fairseq: row b starts ``max(min_masks, int(mask_prob * len_b / mask_length + u))``
    spans (u uniform) at distinct positions drawn uniformly from ``[0, len_b - mask_length)``;
    each span covers ``mask_length`` frames (spans may overlap, so about 49% of frames end up
    masked for 0.65 / 10). With ``require_same_masks`` every row then keeps a random subset of
    its masked frames equal in size to the smallest row's count, so all rows have the same
    number of masked frames (needed to sample distractors per row).

    Args:
        lengths: (B,) valid frames per row.
        num_frames: T, the padded width.
        mask_prob, mask_length, min_masks: fairseq ``mask_prob`` (0.65), ``mask_length`` (10),
            ``min_masks`` (2).
        noise: source of the random draws (default: torch's global generator).

    Shape:
        lengths: (B,) -> (B, T) bool, True = masked.
    """
    noise = noise or Noise()
    device = lengths.device
    B, L = lengths.shape[0], mask_length
    lengths = lengths.long()
    if mask_prob <= 0 and min_masks <= 0:
        return torch.zeros(B, num_frames, dtype=torch.bool, device=device)
    u = noise.rand((B,), device)
    num_spans = torch.floor(mask_prob * lengths / L + u).long().clamp(min=min_masks)
    # fairseq: starts from range(len - L); when that leaves too few, from range(num_spans + 1)
    candidates = torch.where(lengths - L > num_spans, lengths - L, num_spans + 1)
    width = max(num_frames, int(candidates.max()))
    scores = noise.rand((B, width), device)
    positions = torch.arange(width, device=device)
    scores = scores.masked_fill(positions[None, :] >= candidates[:, None], -1.0)
    starts = _top_per_row(scores, num_spans)
    # frame t is masked if a span started in (t - L, t]
    covered = starts.long().cumsum(1)
    shifted = torch.nn.functional.pad(covered, (L, 0))[:, :width]
    mask = (covered - shifted)[:, :num_frames] > 0
    valid = torch.arange(num_frames, device=device)[None, :] < lengths[:, None]
    mask &= valid
    if require_same_masks and B > 1:
        counts = mask.sum(1)
        keep = int(counts.min())
        if (counts > keep).any():
            scores = noise.rand((B, num_frames), device).masked_fill(~mask, -1.0)
            mask = _top_per_row(scores, torch.full_like(counts, keep))
    return mask


def compute_channel_mask(
    batch: int,
    channels: int,
    mask_prob: float,
    mask_length: int,
    noise: Noise | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor:
    """Channel spans to zero (fairseq ``mask_channel_prob``), one set per row.

    Shape:
        -> (B, C) bool, True = zeroed.
    """
    lengths = torch.full((batch,), channels, dtype=torch.long, device=device)
    return compute_span_mask(
        lengths,
        channels,
        mask_prob=mask_prob,
        mask_length=mask_length,
        noise=noise,
        require_same_masks=False,
    )


def draw_mask_plan(
    frame_lengths: torch.Tensor,
    num_frames: int,
    *,
    mask_prob: float,
    mask_length: int,
    min_masks: int,
    num_negatives: int,
    cross_sample_negatives: int = 0,
    noise: Noise | None = None,
) -> MaskPlan:
    """Span mask (`compute_span_mask`) and distractors (`sample_distractors`) on the CPU.

    Args:
        frame_lengths: (B,) valid frames per row, on the CPU.
        num_frames: T, the padded width.
        mask_prob, mask_length, min_masks: fairseq ``mask_prob``, ``mask_length``, 2.
        num_negatives, cross_sample_negatives: K from the row, and from the whole batch.
        noise: source of the draws (default: torch's global generator).
    """
    B = frame_lengths.shape[0]
    mask = compute_span_mask(
        frame_lengths,
        num_frames,
        mask_prob=mask_prob,
        mask_length=mask_length,
        min_masks=min_masks,
        noise=noise,
    )
    M = int(mask.sum(1)[0])
    indices = mask.nonzero()[:, 1].view(B, M)
    parts = []
    if num_negatives:
        parts.append(sample_distractors(B, M, num_negatives, noise))
    if cross_sample_negatives:
        parts.append(sample_cross_distractors(B, M, cross_sample_negatives, noise))
    return MaskPlan(mask, indices, torch.cat(parts, dim=2))


def draw_masks(
    cfg: Wav2Vec2Config, frame_lengths: torch.Tensor, num_frames: int, noise: Noise | None = None
) -> MaskPlan:
    """The config's span mask and distractors, drawn on the CPU: per batch by the data loader,
    or by the model when it is given none.

    Shape:
        frame_lengths: (B,) -> see `MaskPlan`
    """
    mk, ob = cfg.masking, cfg.objective
    return draw_mask_plan(
        frame_lengths.cpu(),
        num_frames,
        mask_prob=mk.mask_prob,
        mask_length=mk.mask_length,
        min_masks=mk.min_masks,
        num_negatives=ob.num_negatives,
        cross_sample_negatives=ob.cross_sample_negatives,
        noise=noise,
    )
