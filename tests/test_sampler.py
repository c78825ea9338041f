"""The length-bucketing batch sampler: the budget per batch, disjoint equal shares per DDP rank,
the mid-epoch resume, and each corpus's share of the batches (weights, temperature)."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import (
    sampler_batches,
)

from w2v2_pretrain.data.sampler import BucketBatchSampler, corpus_shares
from w2v2_pretrain.errors import DataError


def test_budget_respected_and_padding_small():
    rng = np.random.default_rng(0)
    sizes = rng.integers(32_000, 250_000, size=2000)
    s = BucketBatchSampler(sizes, max_tokens=1_400_000, seed=1)
    batches = [[i for i, _ in b] for b in sampler_batches(s, 0)]
    assert sorted(i for b in batches for i in b) == list(range(2000))
    padded = real = 0
    for b in batches:
        assert len(b) * sizes[b].max() <= 1_400_000
        padded += len(b) * sizes[b].max()
        real += sizes[b].sum()
    assert 1 - real / padded < 0.02  # padding fraction
    # reshuffled each epoch from the seed, reproducible
    assert sampler_batches(s, 0) != sampler_batches(s, 1)
    again = BucketBatchSampler(sizes, 1_400_000, seed=1)
    assert sampler_batches(again, 1) == sampler_batches(s, 1)


@pytest.mark.parametrize("world", [2, 3, 4])
def test_ddp_shards_disjoint_complete_equal(world):
    sizes = np.random.default_rng(1).integers(16_000, 64_000, size=101)
    shards = []
    for rank in range(world):
        s = BucketBatchSampler(sizes, 200_000, seed=3, num_replicas=world, rank=rank)
        s.set_epoch(2)
        shards.append([i for batch in s for i, epoch, _ in batch if epoch == 2])
        assert len(s) == len(list(s))
    lengths = {
        len(BucketBatchSampler(sizes, 200_000, seed=3, num_replicas=world, rank=r))
        for r in range(world)
    }
    assert len(lengths) == 1  # every rank the same number of batches
    flat = [i for shard in shards for i in shard]
    assert sorted(flat) == list(range(101))  # disjoint and complete


def test_resume_skips_consumed_batches():
    sizes = np.full(40, 16_000)
    s = BucketBatchSampler(sizes, 64_000, seed=0)
    full = list(s)
    s.resume(epoch=0, consumed=3)
    assert len(s) == len(full)  # Lightning counts the consumed batches as done
    assert list(s) == full[3:]
    assert list(s) == full  # the skip applies once
    s.resume(epoch=0, consumed=3)
    s.set_epoch(1)  # the interrupted epoch had ended: the next one is whole
    assert len(list(s)) == len(full)


def test_corpus_weights_set_each_corpus_share_of_batches():
    """Two corpora, 100 and 20 utterances, weighted 1:1: each gives half of every epoch's
    batches (the small one upsampled, its copies numbered), the batch count stays fixed, and
    batches never mix corpora."""
    rng = np.random.default_rng(0)
    sizes = rng.integers(16_000, 48_000, size=120)
    corpora = np.array([0] * 100 + [1] * 20)
    s = BucketBatchSampler(sizes, 96_000, seed=4, corpora=corpora, weights=[1.0, 1.0])
    counts = set()
    for epoch in range(4):
        s.set_epoch(epoch)
        batches = list(s)
        counts.add(len(batches))
        from_small = [b for b in batches if corpora[b[0][0]] == 1]
        assert abs(len(from_small) - len(batches) / 2) <= 1
        assert all(len({corpora[i] for i, _, _ in b}) == 1 for b in batches)
        small = [(i, c) for b in from_small for i, _, c in b]
        assert len(set(small)) == len(small) and max(c for _, c in small) >= 1  # copies
        assert all(len(b) * max(sizes[i] for i, _, _ in b) <= 96_000 for b in batches)
    assert len(counts) == 1 and len(s) == counts.pop()
    # without weights: one epoch uses each utterance exactly once
    plain = BucketBatchSampler(sizes, 96_000, seed=4, corpora=corpora)
    assert sorted(i for b in plain for i, _, _ in b) == list(range(120))


def test_corpus_shares_natural_weights_and_temperature():
    """Hours 100, 10 and 1 h: naturally 100/111, 10/111, 1/111; with XLS-R's alpha 0.5 each
    share is proportional to sqrt(hours / 111), i.e. 10 : sqrt(10) : 1 (0.706, 0.223, 0.071);
    alpha 1 is the natural share; explicit weights are normalised."""
    hours = np.array([100.0, 10.0, 1.0])
    natural = corpus_shares(hours)
    np.testing.assert_allclose(natural, [100 / 111, 10 / 111, 1 / 111])
    by_hand = np.array([10.0, np.sqrt(10.0), 1.0]) / (11.0 + np.sqrt(10.0))
    tempered = corpus_shares(hours, alpha=0.5)
    np.testing.assert_allclose(tempered, by_hand)
    np.testing.assert_allclose(tempered, [0.70610, 0.22329, 0.07061], atol=1e-5)
    np.testing.assert_allclose(corpus_shares(hours, alpha=1.0), natural)
    flatter = corpus_shares(hours, alpha=0.1)
    assert flatter[2] > tempered[2] > natural[2] and flatter[0] < tempered[0] < natural[0]
    np.testing.assert_allclose(corpus_shares(hours, weights=[3, 1, 4]), [3 / 8, 1 / 8, 4 / 8])
    with pytest.raises(ValueError, match="alpha must be in"):
        corpus_shares(hours, alpha=0.0)
    with pytest.raises(ValueError, match="not both"):
        corpus_shares(hours, weights=[1, 1, 1], alpha=0.5)


def test_temperature_shares_are_realised_in_every_epoch():
    """Three corpora of 3000, 300 and 30 clips (about 3, 0.3 and 0.03 h) sampled with alpha
    0.5: each epoch's batches come from each corpus in its computed share (to one batch), its
    audio to within a point; on two ranks the batches are the same, dealt disjointly, and a
    resume continues exactly."""
    rng = np.random.default_rng(0)
    counts = [3000, 300, 30]
    sizes = rng.integers(16_000, 96_000, size=sum(counts))
    corpora = np.repeat(np.arange(3), counts)
    hours = np.bincount(corpora, sizes) / 16_000 / 3600
    shares = corpus_shares(hours, alpha=0.5)
    assert shares[2] > 2 * counts[2] / sum(counts)  # the small corpus is upsampled

    def sampler(rank: int = 0, world: int = 1) -> BucketBatchSampler:
        return BucketBatchSampler(
            sizes, 200_000, seed=5, corpora=corpora, weights=shares, num_replicas=world, rank=rank
        )

    one, ranks = sampler(), [sampler(r, 2) for r in range(2)]
    for epoch in range(3):
        for s in (one, *ranks):
            s.set_epoch(epoch)
        batches = list(one)
        of = np.array([corpora[b[0][0]] for b in batches])
        assert all(len({corpora[i] for i, _, _ in b}) == 1 for b in batches)
        realised = np.bincount(of, minlength=3) / len(batches)
        np.testing.assert_allclose(realised, shares, atol=1 / len(batches))
        audio = np.bincount(of, [sum(sizes[i] for i, _, _ in b) for b in batches], 3)
        np.testing.assert_allclose(audio / audio.sum(), shares, atol=0.01)
        dealt = [list(s) for s in ranks]
        assert len(dealt[0]) == len(dealt[1])
        assert sorted(map(str, dealt[0] + dealt[1])) == sorted(map(str, batches))
        keys = [{(i, c) for b in d for i, _, c in b} for d in dealt]
        assert not keys[0] & keys[1]  # no utterance copy on both ranks
    one.resume(epoch=2, consumed=7)
    assert list(one) == batches[7:]


def test_a_corpus_left_empty_gives_its_share_to_the_others():
    """Weights for two corpora when the checks left the second empty: the first fills the
    epoch, each utterance once."""
    s = BucketBatchSampler(
        np.full(8, 16_000), 32_000, corpora=np.zeros(8, dtype=np.int64), weights=[0.7, 0.3]
    )
    assert len(s) == 4 and sorted(i for b in s for i, _, c in b if c == 0) == list(range(8))


def test_utterance_larger_than_budget_is_config_error():
    with pytest.raises(DataError, match=r"data.max_tokens=1000 is smaller than one utterance"):
        BucketBatchSampler(np.array([5000]), 1000)
