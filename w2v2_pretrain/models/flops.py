"""FLOPs of a training step (``torch.utils.flop_counter``): the run's model summary and
``scripts/benchmark.py`` count them here."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from w2v2_pretrain.models.config import Wav2Vec2Config
from w2v2_pretrain.models.masking import draw_masks
from w2v2_pretrain.models.noise import Noise
from w2v2_pretrain.models.wav2vec2 import Wav2Vec2Model

BASE_CROP_SECONDS = 250_000 / 16_000
"""fairseq BASE's ``max_sample_size`` (15.6 s): the clip the summary's count is taken on."""


def step_flops(step: Callable[[], torch.Tensor]) -> int:
    """FLOPs of ``step()``, a forward returning a scalar loss, and of its backward."""
    counter = FlopCounterMode(display=False)
    with counter:
        step().backward()
    return counter.get_total_flops()


def training_flops_per_audio_second(
    cfg: Wav2Vec2Config, seconds: float = BASE_CROP_SECONDS
) -> float:
    """Forward + backward FLOPs of a training step on one ``seconds``-long clip, per
    audio-second (attention grows with the clip, so longer clips cost more per second).

    Counted on a model on the meta device: shapes only, so nothing is computed or allocated
    and it takes under a second even for LARGE; the caller's random streams are untouched.
    """
    samples = round(seconds * cfg.input.sample_rate)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)  # LayerDrop's draws: the same count every time
        with torch.device("meta"):
            model = Wav2Vec2Model(cfg).train()
        frames = model.feature_encoder.output_lengths(torch.tensor([samples]))
        noise = Noise(torch.Generator().manual_seed(0))
        plan = draw_masks(cfg, frames, int(frames[0]), noise).to("meta")
        source = torch.empty(1, samples, device="meta")
        flops = step_flops(lambda: model(source, temperature=2.0, plan=plan).loss.total)
    return flops * cfg.input.sample_rate / samples
