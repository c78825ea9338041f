"""The model's parts: shapes, masking statistics, loss values on constructed inputs."""

from __future__ import annotations

import math

import pytest
import torch

from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model, preset
from w2v2_pretrain.models.feature_encoder import frame_lengths
from w2v2_pretrain.models.masking import compute_span_mask
from w2v2_pretrain.models.noise import Noise, PerUtteranceNoise
from w2v2_pretrain.models.objective import (
    contrastive_accuracy,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    sample_cross_distractors,
    sample_distractors,
)
from w2v2_pretrain.models.quantizer import GumbelQuantizer, perplexity


def gen(seed: int = 0) -> Noise:
    return Noise(torch.Generator().manual_seed(seed))


# --- feature encoder -------------------------------------------------------------------------


def test_frame_lengths_match_conv_arithmetic():
    cfg = preset("base")
    enc = Wav2Vec2Model(preset("tiny")).feature_encoder
    for n in (400, 401, 719, 720, 16_000, 250_000):
        x = torch.zeros(1, n)
        assert enc(x).shape[1] == int(enc.output_lengths(torch.tensor([n])))
    assert frame_lengths(torch.tensor([16_000]), cfg.feature_encoder.conv_layers).item() == 49
    assert cfg.receptive_field == 400 and cfg.stride == 320
    assert frame_lengths(torch.tensor([399]), cfg.feature_encoder.conv_layers).item() == 0


def test_output_shapes_and_lengths():
    cfg = preset("tiny")
    model = Wav2Vec2Model(cfg)
    lengths = torch.tensor([32_000, 20_000])
    out = model(torch.randn(2, 32_000), lengths, temperature=2.0, noise=gen())
    B, T, D = out.hidden.shape
    assert (2, 99, cfg.context_network.embed_dim) == (B, T, D)
    assert out.frame_lengths.tolist() == [99, 62]
    M = int(out.mask.sum(1)[0])
    assert out.mask.sum(1).tolist() == [M, M]
    assert not out.mask[1, 62:].any()
    K = cfg.objective.num_negatives
    assert out.context.shape == out.targets.shape == (2, M, cfg.final_dim)
    assert out.logits.shape == (2, M, 1 + K)
    assert out.codes.shape == (2, M, cfg.quantizer.num_groups)
    assert out.loss.num_masked.item() == 2 * M
    assert (out.hidden[1, 62:] == 0).all()  # padded frames zeroed


def test_short_input_is_clear_error():
    model = Wav2Vec2Model(preset("tiny"))
    with pytest.raises(ValueError, match="shorter than the feature encoder's receptive field"):
        model.extract(torch.randn(2, 8000), torch.tensor([8000, 300]))


def test_feature_grad_mult_scales_encoder_gradient():
    def grad(mult):
        torch.manual_seed(0)
        cfg = preset("tiny")
        cfg.feature_encoder.feature_grad_mult = mult
        m = Wav2Vec2Model(cfg).eval()
        x = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
        out = m(x, temperature=1.0, noise=gen(2))
        out.loss.total.backward()
        return m.feature_encoder.conv_layers[0].conv.weight.grad

    full, tenth, frozen = grad(1.0), grad(0.1), grad(0.0)
    torch.testing.assert_close(tenth, 0.1 * full, rtol=1e-3, atol=1e-5 * full.abs().max().item())
    assert frozen is None


@pytest.mark.parametrize("pre_ln", [False, True])
def test_checkpointed_blocks_give_the_same_gradients(pre_ln):
    """``checkpoint_activations`` recomputes each block in backward (dropout included: its
    random state is replayed): the loss and every gradient equal those of a plain pass."""

    def grads(checkpointed: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        torch.manual_seed(0)
        cfg = preset("tiny")
        cfg.context_network.layer_norm_first = pre_ln
        cfg.context_network.checkpoint_activations = checkpointed
        m = Wav2Vec2Model(cfg).train()
        x = torch.randn(2, 16_000, generator=torch.Generator().manual_seed(1))
        torch.manual_seed(3)  # dropout's draws
        out = m(x, temperature=1.0, noise=gen(2))
        out.loss.total.backward()
        return out.loss.total, {n: p.grad for n, p in m.named_parameters() if p.grad is not None}

    (loss, plain), (loss_ckpt, ckpt) = grads(False), grads(True)
    torch.testing.assert_close(loss_ckpt, loss, rtol=0, atol=0)
    assert plain.keys() == ckpt.keys() and len(plain) > 40
    for name, g in plain.items():
        torch.testing.assert_close(ckpt[name], g, rtol=1e-6, atol=1e-7, msg=name)


def test_padding_does_not_leak():
    """An utterance's representations are the same alone and in a padded batch.

    Holds for the layer-norm feature encoder (LARGE). The group-norm encoder (BASE) normalises
    each channel over the whole padded length, in fairseq and transformers alike, which is why
    BASE pretraining crops batches to the shortest clip (``data.collate=crop``).
    """
    cfg = preset("tiny")
    cfg.feature_encoder.mode = "layer_norm"
    model = Wav2Vec2Model(cfg).eval()
    a = torch.randn(1, 24_000)
    batch = torch.zeros(2, 40_000)
    batch[0, :24_000] = a
    batch[1] = torch.randn(40_000)
    with torch.no_grad():
        alone = model.extract(a).hidden
        padded = model.extract(batch, torch.tensor([24_000, 40_000]))
    n = alone.shape[1]
    torch.testing.assert_close(padded.hidden[0, :n], alone[0], rtol=1e-4, atol=1e-5)
    assert (padded.hidden[0, n:] == 0).all()


# --- span masking ----------------------------------------------------------------------------


def test_masked_fraction_matches_fairseq_expectation():
    """0.65 / 10 on long utterances masks about 49% of frames (spans overlap)."""
    lengths = torch.full((1,), 1000)
    fractions = [
        compute_span_mask(lengths, 1000, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen(s))
        .float()
        .mean()
        .item()
        for s in range(300)
    ]
    mean = sum(fractions) / len(fractions)
    # expectation: starts have density 0.065 over len-10 positions; a frame is covered when one
    # of the 10 starts before it is chosen: 1 - (1 - 0.065 * 1000/990)^10
    p = 0.65 / 10 * 1000 / 990
    assert abs(mean - (1 - (1 - p) ** 10)) < 0.01
    assert 0.47 < mean < 0.51


def test_mask_respects_padding_and_equal_counts():
    lengths = torch.tensor([200, 150, 60, 120])
    for s in range(50):
        mask = compute_span_mask(
            lengths, 200, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen(s)
        )
        valid = torch.arange(200)[None] < lengths[:, None]
        assert not (mask & ~valid).any()
        counts = mask.sum(1)
        assert (counts == counts[0]).all() and counts[0] >= 10


def test_min_masks_and_short_rows():
    mask = compute_span_mask(
        torch.tensor([12]), 12, mask_prob=0.0, mask_length=10, min_masks=2, noise=gen()
    )
    assert 10 <= int(mask.sum()) <= 12
    mask = compute_span_mask(
        torch.tensor([5]), 5, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen()
    )
    assert int(mask.sum()) == 5  # spans clipped to the row


def test_mask_is_deterministic_for_a_generator():
    lengths = torch.tensor([300, 250])
    a = compute_span_mask(lengths, 300, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen(7))
    b = compute_span_mask(lengths, 300, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen(7))
    c = compute_span_mask(lengths, 300, mask_prob=0.65, mask_length=10, min_masks=2, noise=gen(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_per_utterance_noise_ignores_batch_position():
    lengths = torch.tensor([300, 300, 300])
    both = compute_span_mask(
        lengths,
        300,
        mask_prob=0.65,
        mask_length=10,
        noise=PerUtteranceNoise([5, 9, 11], seed=1),
        require_same_masks=False,
    )
    swapped = compute_span_mask(
        lengths,
        300,
        mask_prob=0.65,
        mask_length=10,
        noise=PerUtteranceNoise([11, 5, 9], seed=1),
        require_same_masks=False,
    )
    assert torch.equal(both, swapped[[1, 2, 0]])


# --- distractors -----------------------------------------------------------------------------


def test_distractors_never_the_positive_and_uniform():
    idx = sample_distractors(4, 50, 100, gen())
    assert idx.shape == (4, 50, 100)
    assert idx.min() >= 0 and idx.max() <= 49
    assert not (idx == torch.arange(50)[None, :, None]).any()
    # for frame 10, the other 49 frames are drawn equally often
    many = sample_distractors(1, 50, 100_000, gen(1))[0, 10]
    counts = torch.bincount(many, minlength=50).float()
    assert counts[10] == 0
    others = torch.cat([counts[:10], counts[11:]])
    chi2 = ((others - others.mean()) ** 2 / others.mean()).sum().item()
    assert chi2 < 85  # 48 degrees of freedom: the 99.9% quantile is about 85


def test_cross_distractors_never_the_positive():
    idx = sample_cross_distractors(3, 20, 30, gen())
    own = torch.arange(60).view(3, 20, 1)
    assert not (idx == own).any() and idx.max() < 60


# --- objective -------------------------------------------------------------------------------


def test_uniform_logits_give_log_k_plus_one():
    K = 100
    assert contrastive_loss(torch.zeros(37, K + 1)).item() / 37 == pytest.approx(math.log(K + 1))


def test_perfect_prediction_gives_about_zero():
    """Each context equals its own (orthogonal) target: cosine 1 with the positive, 0 with all
    K = M - 1 other frames."""
    K, F_ = 100, 128
    M = K + 1
    targets = torch.eye(F_)[:M][None]  # (1, M, F): frame m's target is e_m
    others = torch.tensor([[n for n in range(M) if n != m] for m in range(M)])[None]
    none = torch.zeros(1, M, K, dtype=torch.bool)
    logits = contrastive_logits(targets.clone(), targets, others, None, 0.1, none)
    assert logits[..., 0].eq(10).all() and logits[..., 1:].eq(0).all()
    loss = contrastive_loss(logits).item() / M
    assert loss == pytest.approx(math.log(1 + K * math.exp(-10)), rel=1e-4) and loss < 0.005
    correct, count = contrastive_accuracy(logits)
    assert correct.item() == count.item() == M


def test_distractor_equal_to_positive_is_minus_inf():
    t = torch.randn(1, 3, 8)
    within = torch.tensor([[[1, 2], [0, 2], [0, 1]]])
    same = torch.zeros(1, 3, 2, dtype=torch.bool)
    same[0, 1, 1] = True  # frame 1's distractor 2 has frame 1's codes
    logits = contrastive_logits(torch.randn(1, 3, 8), t, within, None, 0.1, same)
    assert logits[0, 1, 2] == float("-inf") and torch.isfinite(logits).sum() == 8


def test_logits_equal_cosine_against_gathered_distractors():
    """The similarity-matrix form equals the definition: torch.cosine_similarity between the
    context and the gathered [positive, distractor vectors], within and across utterances."""
    g = torch.Generator().manual_seed(0)
    B, M, K1, K2, F_ = 3, 17, 9, 4, 32
    context, targets = torch.randn(B, M, F_, generator=g), torch.randn(B, M, F_, generator=g)
    within = sample_distractors(B, M, K1, gen(1))
    cross = sample_cross_distractors(B, M, K2, gen(2))
    same = torch.rand(B, M, K1 + K2, generator=g) < 0.1
    got = contrastive_logits(context, targets, within, cross, 0.1, same)
    vectors = torch.cat(
        [targets[torch.arange(B)[:, None, None], within], targets.reshape(B * M, F_)[cross]], 2
    )
    candidates = torch.cat([targets.unsqueeze(2), vectors], 2)
    expected = torch.cosine_similarity(context.unsqueeze(2), candidates, dim=-1) / 0.1
    expected[..., 1:] = expected[..., 1:].masked_fill(same, float("-inf"))
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def test_accuracy_ignores_all_equal_rows():
    logits = torch.tensor([[0.0, 0.0, 0.0], [5.0, 1.0, 0.0], [0.0, 2.0, 1.0]])
    correct, count = contrastive_accuracy(logits)
    assert correct.item() == 1 and count.item() == 3


def test_diversity_uniform_zero_collapsed_one():
    G, V = 2, 320
    uniform = torch.full((64, G, V), 1 / V)
    # 0 up to fairseq's epsilon: the entropy is low by at most V * 1e-7 nats
    assert diversity_loss(perplexity(uniform), G * V).item() == pytest.approx(0.0, abs=V * 1e-7)
    collapsed = torch.zeros(64, G, V)
    collapsed[..., 3] = 1
    assert perplexity(collapsed).item() == pytest.approx(G)
    assert diversity_loss(perplexity(collapsed), G * V).item() == pytest.approx(1 - G / (G * V))


# --- quantizer -------------------------------------------------------------------------------


def test_diversity_gradient_finite_at_zero_probabilities():
    """An entry whose batch-mean probability is exactly 0 (softmax underflow) must not send NaN
    back: xlogy does, fairseq's ``avg * log(avg + 1e-7)`` does not."""
    G, V = 2, 4
    probs = torch.tensor([[0.0, 0.5, 0.5, 0.0], [1.0, 0.0, 0.0, 0.0]]).expand(3, G, V).clone()
    probs.requires_grad_(True)
    loss = diversity_loss(perplexity(probs), G * V)
    loss.backward()
    assert torch.isfinite(probs.grad).all()
    # the value is fairseq's formula; it differs from the exact entropy by at most V * 1e-7
    avg = probs.detach().mean(0)
    fairseq = torch.exp(-(avg * torch.log(avg + 1e-7)).sum(-1)).sum()
    exact = torch.exp(-torch.xlogy(avg, avg).sum(-1)).sum()  # 2 + 1
    assert perplexity(probs.detach()) == pytest.approx(fairseq.item(), rel=1e-7)
    assert exact.item() == pytest.approx(3.0)
    assert abs(perplexity(probs.detach()).item() - 3.0) <= 3.0 * V * 1e-7
    # and xlogy really is the hole this closes
    p = probs.detach().clone().requires_grad_(True)
    a = p.mean(0)
    torch.exp(-torch.xlogy(a, a).sum(-1)).sum().backward()
    assert torch.isnan(p.grad).any()


def test_quantizer_gradient_finite_when_softmax_underflows():
    """Logits spread by far more than 100 make some probabilities exactly 0 in float32."""
    q = GumbelQuantizer(input_dim=8, num_groups=2, num_vars=16, codevector_dim=8).train()
    with torch.no_grad():
        q.logits_proj.weight.mul_(1000.0)
    x = torch.randn(2, 6, 8)
    out = q(x, temperature=2.0, noise=gen())
    probs = torch.softmax(q.logits_proj(x).view(12, 2, 16), -1)
    assert (probs.mean(0) == 0).any()  # the case that made xlogy return NaN
    diversity_loss(out.prob_perplexity, 32).backward()
    assert all(torch.isfinite(p.grad).all() for p in q.parameters() if p.grad is not None)
    assert q.logits_proj.weight.grad.abs().sum() > 0


def test_straight_through_forward_one_hot_backward_soft():
    torch.manual_seed(0)
    q = GumbelQuantizer(input_dim=16, num_groups=2, num_vars=8, codevector_dim=12).train()
    x = torch.randn(2, 5, 16)
    w = torch.randn(2, 5, 12)
    out = q(x, temperature=0.7, noise=gen(3))
    (out.quantized * w).sum().backward()
    st_grad = q.logits_proj.weight.grad.clone()

    # forward: every frame's codevector is exactly one codebook entry per group
    books = q.codebook.detach()
    expected = torch.cat([books[g][out.codes[..., g]] for g in range(2)], dim=-1)
    assert torch.equal(out.quantized.detach(), expected)

    # backward: the gradient of the soft Gumbel-softmax sample with the same noise
    q.zero_grad()
    u = gen(3).rand((2, 5, 2, 8))
    gumbels = -torch.log(-torch.log(u.clamp(min=torch.finfo(torch.float32).tiny, max=1 - 1e-7)))
    logits = q.logits_proj(x).view(2, 5, 2, 8)
    soft = torch.softmax((logits + gumbels) / 0.7, -1)
    assert torch.equal(soft.argmax(-1), out.codes)
    soft_q = torch.einsum("bmgv,gvd->bmgd", soft, q.codebook).reshape(2, 5, 12)
    (soft_q * w).sum().backward()
    torch.testing.assert_close(st_grad, q.logits_proj.weight.grad, rtol=1e-5, atol=1e-6)


def test_eval_quantizer_is_argmax():
    q = GumbelQuantizer(input_dim=16, num_groups=2, num_vars=8, codevector_dim=12).eval()
    x = torch.randn(3, 4, 16)
    out = q(x, temperature=2.0)
    assert torch.equal(out.codes, q.logits_proj(x).view(3, 4, 2, 8).argmax(-1))
    assert out.code_perplexity <= 2 * 8 and out.prob_perplexity <= 2 * 8


def test_quantizer_init():
    q = GumbelQuantizer(input_dim=512, num_groups=2, num_vars=320, codevector_dim=256)
    assert abs(q.logits_proj.weight.std().item() - 1.0) < 0.01
    assert q.codebook.min() >= 0 and q.codebook.max() <= 1 and q.codebook.shape == (2, 320, 128)


# --- config ----------------------------------------------------------------------------------


def test_presets_and_validation():
    base, large = preset("base"), preset("large")
    assert (
        base.context_network.layer_norm_first is False and large.context_network.layer_norm_first
    )
    assert large.feature_encoder.mode == "layer_norm" and large.feature_encoder.conv_bias
    assert base.quantizer.temperature_at(0) == 2.0
    assert base.quantizer.temperature_at(10**6) == 0.5
    assert large.quantizer.temperature_at(10**6) == 0.1
    cfg = preset("base")
    cfg.context_network.num_heads = 7
    with pytest.raises(ConfigError, match=r"model.context_network.num_heads: embed_dim 768"):
        cfg.validate()
    with pytest.raises(ConfigError, match=r"model.masking: unknown field\(s\) \['mask_prb'\]"):
        Wav2Vec2Config.from_dict({"masking": {"mask_prb": 0.5}})
    with pytest.raises(ConfigError, match="model preset 'huge' unknown"):
        preset("huge")
    round_trip = Wav2Vec2Config.from_dict(preset("large").to_dict())
    assert round_trip == preset("large")
