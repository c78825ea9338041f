"""FLOPs of a training step: the meta-device count is the count of a real step."""

import torch

from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.models.flops import step_flops, training_flops_per_audio_second
from w2v2_pretrain.models.masking import draw_masks
from w2v2_pretrain.models.noise import Noise


def test_meta_count_matches_a_real_step_and_leaves_rng_alone():
    cfg = preset("tiny")
    state = torch.get_rng_state()
    counted = training_flops_per_audio_second(cfg, seconds=1.0)
    assert torch.equal(state, torch.get_rng_state())
    assert counted == training_flops_per_audio_second(cfg, seconds=1.0)

    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    frames = model.feature_encoder.output_lengths(torch.tensor([16_000]))
    plan = draw_masks(cfg, frames, int(frames[0]), Noise(torch.Generator().manual_seed(0)))
    source = torch.randn(1, 16_000)
    real = step_flops(lambda: model(source, temperature=2.0, plan=plan).loss.total)
    assert counted == real > 1e9
