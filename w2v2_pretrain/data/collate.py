"""Utterances to a `Batch`: cropped or padded to one length, with the batch's masks and
distractors drawn in the loader worker (`MaskPlanner`), so the training step plans nothing."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from w2v2_pretrain.data.config import CollateMode
from w2v2_pretrain.data.dataset import BadFile, Utterance, crop_start
from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.feature_encoder import frame_lengths
from w2v2_pretrain.models.masking import MaskPlan, draw_masks
from w2v2_pretrain.models.noise import PerUtteranceNoise


@dataclass
class Batch:
    """A collated batch of raw audio, with everything the step needs decided on the host.

    Shape:
        source: (B, L) float32 samples, zero-padded past each row's length.
        lengths: (B,) int64 valid samples per row.
        ids: (B,) int64 index of each utterance in its manifest.
        plan: masked frames and distractors (`MaskPlan`), drawn by the collator; None when no
            planner was given (the model then draws them).
        padded: True when some row is shorter than L (known without reading ``lengths`` back
            from the device).
        bad_files: ``where: reason`` of each bad file of this batch: it could not be decoded
            and was skipped (``data.on_bad_file``).
        read_samples: samples of the clips as read (each already capped at
            ``data.max_sample_size``), before the collator cropped them to the shortest.
        kept_samples: samples of the clips the batch holds (the sum of ``lengths``, on the host).
        data_wait: seconds the training loop waited for this batch (set by the loader,
            `TimedDataLoader`; 0 elsewhere).

    The last three are host numbers (the monitoring of ``train/padding_fraction``,
    ``train/cropped_fraction`` and ``train/data_wait_fraction``), so reading them costs the
    step no copy back from the device.
    """

    source: torch.Tensor
    lengths: torch.Tensor
    ids: torch.Tensor
    plan: MaskPlan | None = None
    padded: bool = False
    bad_files: tuple[str, ...] = ()
    read_samples: int = 0
    kept_samples: int = 0
    data_wait: float = 0.0

    def __len__(self) -> int:
        return self.source.shape[0]

    @property
    def padding_samples(self) -> int:
        """Zeros added past the rows' lengths (host arithmetic on the shape)."""
        return self.source.shape[0] * self.source.shape[1] - self.kept_samples

    def pin_memory(self) -> Batch:
        return dataclasses.replace(
            self,
            source=self.source.pin_memory(),
            lengths=self.lengths.pin_memory(),
            ids=self.ids.pin_memory(),
            plan=self.plan.pin_memory() if self.plan is not None else None,
        )


@dataclass(frozen=True)
class MaskSeeds:
    """Where a run's masks and distractors are drawn from: training anew each epoch from
    (``train``, epoch, utterance), or the same every epoch when ``fixed`` (overfitting one
    batch); validation always the same, from ``val`` (so validations compare)."""

    train: int
    val: int
    fixed: bool = False


@dataclass(frozen=True)
class MaskPlanner:
    """Draws each batch's `MaskPlan` in the data loader, from the model's masking settings.

    Every draw of an utterance comes from a generator seeded by (seed, epoch, utterance), so the
    masks and distractors do not depend on the batch, rank or worker it lands in, and a resumed
    run draws what the uninterrupted run drew. ``per_epoch=False`` draws the same every epoch
    (validation, and a fixed noise seed for overfitting one batch).
    """

    model: Wav2Vec2Config
    seed: int
    per_epoch: bool = True

    @staticmethod
    def for_splits(model: Wav2Vec2Config, seeds: MaskSeeds) -> dict[str, MaskPlanner]:
        """The planners of the ``train`` and ``valid`` loaders."""
        return {
            "train": MaskPlanner(model, seeds.train, per_epoch=not seeds.fixed),
            "valid": MaskPlanner(model, seeds.val, per_epoch=False),
        }

    def __call__(self, lengths: torch.Tensor, width: int, items: list[Utterance]) -> MaskPlan:
        """The plan of a batch whose rows hold ``lengths`` of ``width`` samples."""
        layers = self.model.feature_encoder.conv_layers
        frames = frame_lengths(lengths, layers)
        num_frames = int(frame_lengths(torch.tensor([width]), layers)[0])
        keys = [
            (u.seed[1], u.index, *u.seed[3:]) if self.per_epoch else (u.index, *u.seed[3:])
            for u in items
        ]
        return draw_masks(self.model, frames, num_frames, PerUtteranceNoise(keys, self.seed))


class Collator:
    """Stack utterances into a `Batch` and, with a planner, draw its masks and distractors.

    ``mode=crop`` crops every item to the shortest in the batch (fairseq's pretraining default,
    no padding at all; random windows in training, aligned to ``crop_alignment`` samples);
    ``mode=pad`` zero-pads to the longest and keeps each row's length. Items that could not be
    decoded (bad files) are skipped and named in ``Batch.bad_files``.
    """

    def __init__(
        self,
        mode: CollateMode | str = CollateMode.crop,
        train: bool = True,
        planner: MaskPlanner | None = None,
        crop_alignment: int = 1,
    ) -> None:
        self.mode = CollateMode.parse(mode, "data.collate")
        self.train = train
        self.planner = planner
        self.crop_alignment = crop_alignment

    def __call__(self, entries: list[Utterance | BadFile]) -> Batch:
        items = [u for u in entries if isinstance(u, Utterance)]
        bad = tuple(f"{b.where}: {b.reason}" for b in entries if isinstance(b, BadFile))
        if not items:
            empty = torch.zeros(0, dtype=torch.long)
            return Batch(torch.zeros(0, 0), empty, empty, bad_files=bad)
        lengths = [len(u.wav) for u in items]
        read = sum(lengths)
        if self.mode == CollateMode.crop:
            target = min(lengths)
            rows = []
            for u in items:
                seed = (*u.seed, 1) if self.train else None
                start = crop_start(len(u.wav), target, seed, self.crop_alignment)
                rows.append(u.wav[start : start + target])
            source = torch.from_numpy(np.stack(rows))
            lengths = [target] * len(items)
        else:
            source = torch.zeros(len(items), max(lengths))
            for row, u in enumerate(items):
                source[row, : len(u.wav)] = torch.from_numpy(u.wav)
        length_t = torch.tensor(lengths, dtype=torch.long)
        return Batch(
            source=source,
            lengths=length_t,
            ids=torch.tensor([u.index for u in items], dtype=torch.long),
            plan=self.planner(length_t, source.shape[1], items) if self.planner else None,
            padded=min(lengths) < source.shape[1],
            bad_files=bad,
            read_samples=read,
            kept_samples=sum(lengths),
        )
