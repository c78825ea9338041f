"""What the micro-batches of an update (or the batches of a validation) add up to, and the
metrics made from the sums.

The sums travel as one float64 vector on the device (`UpdateSums.to_vector`): one addition per
micro-batch and one all-reduce per update, whatever the number of terms; `UpdateSums` names
its entries (`UpdateSums.from_vector` makes views, no copies). Nothing here reads a value back
to the host.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from w2v2_pretrain.models.config import ObjectiveConfig


@dataclass
class UpdateSums:
    """Each field a 0-d tensor: a sum over the update's micro-batches (on this rank, or over
    every rank once all-reduced)."""

    total: torch.Tensor
    """Loss summed over masked frames (fairseq's criterion output)."""
    contrastive: torch.Tensor
    """Contrastive loss summed over masked frames."""
    num_masked: torch.Tensor
    correct: torch.Tensor
    """Masked frames whose positive scored highest (fairseq's accuracy numerator) ..."""
    count: torch.Tensor
    """... of the frames scored (ties of all-equal logits left out)."""
    diversity: torch.Tensor
    """Per micro-batch values from here on: averaged over ``micro_batches`` in the metrics."""
    feature_penalty: torch.Tensor
    prob_perplexity: torch.Tensor
    code_perplexity: torch.Tensor
    identical_distractors: torch.Tensor
    micro_batches: torch.Tensor
    """Micro-batches with at least one utterance."""
    valid_frames: torch.Tensor
    audio_samples: torch.Tensor
    bad_files: torch.Tensor
    """Bad files of the update's batches: they could not be decoded, and were skipped."""
    nonfinite_loss: torch.Tensor
    """Micro-batches whose loss was not finite."""

    @classmethod
    def of(cls, out, batch, device: torch.device) -> UpdateSums:
        """One micro-batch's contribution: ``out`` its `Wav2Vec2Output` (None when every file
        of the batch was a bad file), ``batch`` its `Batch`."""
        bad = torch.full((), len(batch.bad_files), dtype=torch.float64, device=device)
        if out is None:
            zero = torch.zeros((), dtype=torch.float64, device=device)
            return cls(**{f.name: zero for f in dataclasses.fields(cls)} | {"bad_files": bad})
        loss = out.loss
        total = loss.total.detach()
        return cls(
            total=total,
            contrastive=loss.contrastive.detach(),
            num_masked=loss.num_masked,
            correct=loss.correct,
            count=loss.count,
            diversity=loss.diversity.detach(),
            feature_penalty=loss.feature_penalty.detach(),
            prob_perplexity=loss.prob_perplexity,
            code_perplexity=loss.code_perplexity,
            identical_distractors=loss.identical_distractors,
            micro_batches=torch.ones((), device=device),
            valid_frames=out.frame_lengths.sum(),
            audio_samples=batch.lengths.sum(),
            bad_files=bad,
            nonfinite_loss=~torch.isfinite(total),
        )

    def to_vector(self) -> torch.Tensor:
        """(F,) float64, the fields in order (one stack: built from device scalars)."""
        return torch.stack([getattr(self, f.name).double() for f in dataclasses.fields(self)])

    @classmethod
    def from_vector(cls, vector: torch.Tensor) -> UpdateSums:
        """The fields of a vector `to_vector` made (and sums of such vectors)."""
        return cls(*vector.unbind())

    @classmethod
    def size(cls) -> int:
        return len(dataclasses.fields(cls))

    def metrics(self, objective: ObjectiveConfig, prefix: str) -> dict[str, torch.Tensor]:
        """Per-update (or per-validation) metrics: losses per masked frame in nats, accuracy
        over all scored frames, batch statistics averaged over micro-batches."""
        m = self.num_masked.clamp(min=1)
        n = self.micro_batches.clamp(min=1)
        diversity, penalty = self.diversity / n, self.feature_penalty / n
        out = {
            "loss": self.total / m,
            "contrastive": self.contrastive / m,
            "diversity": diversity,
            "feature_penalty": penalty,
            "weighted_diversity": objective.diversity_weight * diversity,
            "weighted_feature_penalty": objective.feature_penalty_weight * penalty,
            "accuracy": self.correct / self.count.clamp(min=1),
            "code_perplexity": self.code_perplexity / n,
            "prob_perplexity": self.prob_perplexity / n,
            "identical_distractors": self.identical_distractors / n,
            "masked_fraction": self.num_masked / self.valid_frames.clamp(min=1),
        }
        return {f"{prefix}/{k}": v.float() for k, v in out.items()}
