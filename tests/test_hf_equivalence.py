"""Our wav2vec 2.0 equals transformers' ``Wav2Vec2ForPreTraining`` with the same weights.

Same weights, eval mode, the same mask and distractor indices, on padded batches of different
lengths: hidden states, projected context and targets, logits and losses agree to 1e-5.

Where transformers knowingly differs from fairseq (and from us) the difference is tested
explicitly:
- transformers has no feature penalty term (fairseq's ``loss_weights[1]``) and no
  ``feature_grad_mult``;
- in eval mode transformers' diversity term uses the hard one-hot code distribution (our
  ``code_perplexity``), in training the softmax (our ``prob_perplexity``); we always use the
  softmax, as fairseq does;
- perplexities use fairseq's ``avg * log(avg + 1e-7)`` (finite gradient at zero probabilities)
  where transformers uses ``xlogy``: each codebook's entropy differs by at most V * 1e-7 nats, so
  perplexities and the diversity term are compared within 1e-5 + V * 1e-7 (2.2e-5 for BASE's 320
  entries).
"""

from __future__ import annotations

import pytest
import torch
from helpers import plan_from_mask

transformers = pytest.importorskip("transformers")

from w2v2_pretrain.interop.hf import to_hf_config, to_hf_model  # noqa: E402
from w2v2_pretrain.models import Wav2Vec2Model, preset  # noqa: E402
from w2v2_pretrain.models.masking import compute_span_mask  # noqa: E402
from w2v2_pretrain.models.objective import sample_distractors  # noqa: E402
from w2v2_pretrain.models.quantizer import perplexity  # noqa: E402


def shaped(name: str, layers: int):
    """A preset with few layers: BASE-shaped and LARGE-shaped configs cheap enough for CPU."""
    cfg = preset(name)
    cfg.context_network.num_layers = layers
    return cfg


CONFIGS = {
    "tiny": lambda: preset("tiny"),
    "base-shaped": lambda: shaped("base", 2),
    "large-shaped": lambda: shaped("large", 2),
}


def close(ours: torch.Tensor, theirs: torch.Tensor, rtol: float = 1e-5) -> None:
    scale = theirs.abs().max().clamp(min=1e-6)
    err = (ours.double() - theirs.double()).abs().max() / scale
    assert err <= rtol, f"max relative error {err:.2e}"


def hf_indices(mask: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Our row-local distractor indices (B, M, K) as transformers' flat (B, T, K) indices."""
    B, T = mask.shape
    K = within.shape[-1]
    pos = torch.stack([row.nonzero().squeeze(1) for row in mask])  # (B, M) frame of each
    flat = pos + torch.arange(B)[:, None] * T  # (B, M) index into B*T
    out = torch.zeros(B, T, K, dtype=torch.long)
    rows = torch.arange(B)[:, None, None]
    out[rows, pos[..., None], torch.arange(K)] = flat[rows, within]
    return out


@pytest.mark.parametrize("name", list(CONFIGS))
@torch.no_grad()
def test_same_weights_same_outputs(name):
    torch.manual_seed(0)
    cfg = CONFIGS[name]()
    ours = Wav2Vec2Model(cfg).eval()
    theirs = to_hf_model(ours)
    lengths = torch.tensor([40_000, 33_000, 24_000])
    source = torch.randn(3, 40_000) * 0.1
    for row, n in enumerate(lengths):
        source[row, n:] = 0
    frames = ours.feature_encoder.output_lengths(lengths)
    T = int(frames.max())
    g = torch.Generator().manual_seed(1)
    from w2v2_pretrain.models.noise import Noise

    mask = compute_span_mask(
        frames, T, mask_prob=0.65, mask_length=10, min_masks=2, noise=Noise(g)
    )
    M = int(mask.sum(1)[0])
    within = sample_distractors(3, M, cfg.objective.num_negatives, Noise(g))

    out = ours(source, lengths, temperature=2.0, plan=plan_from_mask(mask, within))
    attention = (torch.arange(40_000)[None] < lengths[:, None]).long()
    hf_out = theirs(
        source,
        attention_mask=attention,
        mask_time_indices=mask,
        sampled_negative_indices=hf_indices(mask, within),
    )
    hidden = theirs.wav2vec2(source, attention_mask=attention, mask_time_indices=mask)

    valid = torch.arange(T)[None] < frames[:, None]
    close(out.hidden[valid], hidden.last_hidden_state[valid])
    close(out.context, hf_out.projected_states[mask].view(3, M, -1))
    close(out.targets, hf_out.projected_quantized_states[mask].view(3, M, -1))
    assert hf_out.contrastive_loss.item() > 0
    close(out.loss.contrastive, hf_out.contrastive_loss)
    # transformers' logits are not returned; rebuild them from its outputs
    hf_logits = theirs.compute_contrastive_logits(
        hf_out.projected_quantized_states[mask].view(3, M, -1)[None],
        hf_out.projected_quantized_states[mask]
        .view(3 * M, -1)[(within + torch.arange(3)[:, None, None] * M).view(-1)]
        .view(3, M, -1, out.targets.shape[-1])
        .permute(2, 0, 1, 3),
        hf_out.projected_states[mask].view(3, M, -1),
        cfg.objective.logit_temp,
    ).permute(1, 2, 0)
    finite = torch.isfinite(out.logits)
    close(out.logits[finite], hf_logits[finite])

    # diversity: transformers in eval uses the hard code distribution = our code perplexity
    GV = cfg.quantizer.num_groups * cfg.quantizer.num_vars
    ppl_rtol = 1e-5 + cfg.quantizer.num_vars * 1e-7  # fairseq's epsilon against xlogy
    close(out.loss.code_perplexity, hf_out.codevector_perplexity, ppl_rtol)
    close((GV - out.loss.code_perplexity) / GV * 3 * M, hf_out.diversity_loss, ppl_rtol)
    # and its training-mode softmax perplexity equals our prob perplexity
    feats = theirs.wav2vec2.feature_projection.layer_norm(
        theirs.wav2vec2.feature_extractor(source).transpose(1, 2)
    )
    probs = torch.softmax(
        theirs.quantizer.weight_proj(feats).view(3 * T, cfg.quantizer.num_groups, -1), -1
    )
    close(out.loss.prob_perplexity, theirs.quantizer._compute_perplexity(probs, mask), ppl_rtol)
    close(out.loss.prob_perplexity, perplexity(probs[mask.flatten()]))

    # transformers has no feature penalty: its loss is ours without that term
    expected = out.loss.contrastive + cfg.objective.diversity_weight * hf_out.diversity_loss
    close(hf_out.loss, expected, ppl_rtol)
    if cfg.objective.feature_penalty_weight:
        assert out.loss.total > expected
        close(
            out.loss.total
            - out.loss.contrastive
            - cfg.objective.diversity_weight * out.loss.diversity * 3 * M,
            cfg.objective.feature_penalty_weight * out.loss.feature_penalty * 3 * M,
        )


# The released transformers configs (config.json of facebook/wav2vec2-xls-r-300m, -1b, -2b):
# all three have feat_extract_norm "layer", conv_bias true, do_stable_layer_norm true, 16 heads,
# a 128-wide positional conv in 16 groups, 2 x 320 codevectors and 7 convs of 512 channels.
XLSR_RELEASED = {
    "xlsr_300m": dict(num_hidden_layers=24, hidden_size=1024, intermediate_size=4096,
                      codevector_dim=768, proj_codevector_dim=768),
    "xlsr_1b": dict(num_hidden_layers=48, hidden_size=1280, intermediate_size=5120,
                    codevector_dim=1024, proj_codevector_dim=1024),
    "xlsr_2b": dict(num_hidden_layers=48, hidden_size=1920, intermediate_size=7680,
                    codevector_dim=1024, proj_codevector_dim=1024),
}  # fmt: skip
XLSR_COMMON = dict(
    feat_extract_norm="layer",
    conv_bias=True,
    do_stable_layer_norm=True,
    num_attention_heads=16,
    num_conv_pos_embeddings=128,
    num_conv_pos_embedding_groups=16,
    num_codevector_groups=2,
    num_codevectors_per_group=320,
    conv_dim=[512] * 7,
    conv_kernel=[10, 3, 3, 3, 3, 2, 2],
    conv_stride=[5, 2, 2, 2, 2, 2, 2],
)
# millions of parameters, ours and transformers' alike
COUNTS = {"base": 95.0, "large": 317.4, "xlsr_300m": 317.4, "xlsr_1b": 965.5, "xlsr_2b": 2162.9}


def count(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", list(COUNTS))
def test_parameter_counts_equal_transformers(name):
    """Every preset has as many parameters as transformers' model of the same shapes (built on
    the meta device: no weights allocated). The one tensor of ours without a transformers
    module of the same name, the mask embedding, is its ``masked_spec_embed`` (D,)."""
    with torch.device("meta"):
        ours = Wav2Vec2Model(preset(name))
        theirs = transformers.Wav2Vec2ForPreTraining(to_hf_config(preset(name)))
    assert theirs.wav2vec2.masked_spec_embed.shape == ours.mask_embedding.shape
    assert count(ours) == count(theirs)
    assert round(count(ours) / 1e6, 1) == COUNTS[name]


@pytest.mark.parametrize("name", list(XLSR_RELEASED))
def test_xlsr_presets_have_the_released_shapes(name):
    """Our XLS-R presets are the released models: their transformers config fields, and the
    parameter count of a ``Wav2Vec2ForPreTraining`` built from the published values alone."""
    published = XLSR_RELEASED[name] | XLSR_COMMON
    hf = to_hf_config(preset(name))
    assert {k: getattr(hf, k) for k in published} == published
    with torch.device("meta"):
        released = transformers.Wav2Vec2ForPreTraining(transformers.Wav2Vec2Config(**published))
        ours = Wav2Vec2Model(preset(name))
    assert count(ours) == count(released)
    cfg = preset(name)
    assert cfg.input.normalize and cfg.feature_encoder.feature_grad_mult == 1.0
