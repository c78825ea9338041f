"""The dataset's items and the collator: crops (random in training, aligned on request, fixed in
validation), crop and pad batches, and masks planned per utterance in the loader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import (
    manifest_of,
    padding_mask,
)

from w2v2_pretrain.data.collate import Collator, MaskPlanner
from w2v2_pretrain.data.dataset import AudioDataset
from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.models.feature_encoder import frame_lengths


def test_crop_train_random_valid_deterministic(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 2.0})
    full = AudioDataset(m)[0].wav
    train = AudioDataset(m, max_sample_size=8000, train=True, seed=5)
    valid = AudioDataset(m, max_sample_size=8000, train=False)
    starts = set()
    for epoch in range(6):
        w = train[(0, epoch)].wav
        assert w.shape == (8000,)
        start = int(
            np.flatnonzero(np.isclose(full, w[0]) & np.isclose(np.roll(full, -1), w[1]))[0]
        )
        np.testing.assert_array_equal(full[start : start + 8000], w)
        starts.add(start)
        np.testing.assert_array_equal(w, train[(0, epoch)].wav)  # same (seed, epoch, index)
    assert len(starts) > 1
    np.testing.assert_array_equal(valid[(0, 3)].wav, full[:8000])


def test_collate_crop_and_pad_shapes(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 1.0, "1/1/b.flac": 0.5, "1/1/c.flac": 0.75})
    ds = AudioDataset(m)
    items = [ds[i] for i in range(3)]
    crop = Collator("crop")(items)
    assert crop.source.shape == (3, 8000)
    assert crop.lengths.tolist() == [8000] * 3 and not padding_mask(crop).any()
    assert crop.ids.tolist() == [0, 1, 2]
    pad = Collator("pad")(items)
    assert pad.source.shape == (3, 16_000)
    assert pad.lengths.tolist() == [16_000, 8000, 12_000]
    assert padding_mask(pad).sum(1).tolist() == [0, 8000, 4000]
    assert (pad.source[1, 8000:] == 0).all()
    np.testing.assert_array_equal(pad.source[2, :12_000].numpy(), items[2].wav)
    assert pad.padded and not crop.padded  # known on the host, without reading lengths back
    with pytest.raises(ConfigError, match="data.collate: expected one of 'crop', 'pad'"):
        Collator("trim")


def test_aligned_crops_start_on_frame_boundaries(tmp_path):
    """crop_alignment=320: every random crop starts at a multiple of the encoder's stride, so
    a stretch of audio maps to the same frames (and targets) whenever it is seen."""
    m = manifest_of(tmp_path, {"1/1/a.flac": 3.0, "1/1/b.flac": 2.1})
    full = AudioDataset(m)[0].wav
    ds = AudioDataset(m, max_sample_size=16_000, seed=3, crop_alignment=320)
    starts = set()
    for epoch in range(20):
        w = ds[(0, epoch)].wav
        start = int(
            np.flatnonzero(np.isclose(full, w[0]) & np.isclose(np.roll(full, -1), w[1]))[0]
        )
        assert start % 320 == 0
        starts.add(start)
        batch = Collator("crop", crop_alignment=320)([ds[(0, epoch)], ds[(1, epoch)]])
        assert batch.source.shape[1] == 16_000
    assert len(starts) > 5


def test_collator_plans_masks_per_utterance(tmp_path):
    """The planner draws each utterance's masks from (seed, epoch, utterance): the same in any
    batch, new each epoch, and valid (equal counts, never on padding)."""
    from w2v2_pretrain.models import preset

    m = manifest_of(tmp_path, {"a.flac": 2.0, "b.flac": 2.0, "c.flac": 1.5})
    ds = AudioDataset(m)
    planner = MaskPlanner(preset("tiny"), seed=4)
    collate = Collator("pad", planner=planner)
    ab = collate([ds[(0, 0)], ds[(1, 0)]])
    ba = collate([ds[(1, 0)], ds[(0, 0)]])
    assert torch.equal(ab.plan.mask, ba.plan.mask[[1, 0]])
    assert not torch.equal(ab.plan.mask, collate([ds[(0, 1)], ds[(1, 1)]]).plan.mask)
    padded = collate([ds[(0, 0)], ds[(2, 0)]])
    frames = padded.plan.mask.shape[1]
    short = int(frame_lengths(torch.tensor([24_000]), preset("tiny").feature_encoder.conv_layers))
    assert not padded.plan.mask[1, short:].any() and frames > short
    M = padded.plan.num_masked
    assert padded.plan.mask.sum(1).tolist() == [M, M]
    assert (padded.plan.mask.gather(1, padded.plan.indices)).all()
    assert padded.plan.distractors.shape == (2, M, preset("tiny").objective.num_negatives)
