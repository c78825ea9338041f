"""Settings that are valid one by one but not together: refused in one line, or warned of once.

`check_combinations` runs when a run is built, after each node passed its own validation
(`DataConfig.validate`, `Wav2Vec2Config.validate`); `accumulation_for` derives the gradient
accumulation from ``data.audio_per_update`` and the devices.
"""

from __future__ import annotations

import pytorch_lightning as pl
import torch

from w2v2_pretrain.data.config import CollateMode, DataConfig
from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.logs import run_logger
from w2v2_pretrain.models.config import FeatureEncoderMode, Wav2Vec2Config
from w2v2_pretrain.models.feature_encoder import frame_lengths
from w2v2_pretrain.models.masking import compute_span_mask
from w2v2_pretrain.models.noise import Noise

log = run_logger(__name__)  # every rank builds the run: each warning is said once


def check_combinations(model: Wav2Vec2Config, data: DataConfig) -> None:
    """Raise a one-line `ConfigError` for settings that cannot work together; warn (once per
    run) of those that work but are known to hurt."""
    _check_input_contract(model, data)
    _check_masking_fits_clips(model, data)
    if model.feature_encoder.mode == FeatureEncoderMode.layer_norm:
        if model.objective.feature_penalty_weight:
            log.warning(
                "model.feature_encoder.mode=layer_norm with model.objective."
                "feature_penalty_weight=%g: the penalty can make the features the same at every "
                "frame and collapse the codebooks (the demo does within 20 updates); LARGE uses "
                "0. See README, 'Run health'",
                model.objective.feature_penalty_weight,
            )
    elif data.collate == CollateMode.pad:
        raise ConfigError(
            "data.collate=pad with model.feature_encoder.mode=group_norm: group norm's "
            "statistics include the padding, so padded clips get other features; use "
            "data.collate=crop (fairseq's default) or the layer_norm encoder"
        )


def _check_input_contract(model: Wav2Vec2Config, data: DataConfig) -> None:
    for name in ("sample_rate", "normalize"):
        if getattr(data, name) != getattr(model.input, name):
            raise ConfigError(
                f"data.{name}={getattr(data, name)} but model.input.{name}="
                f"{getattr(model.input, name)}: set model.input.{name} (the data follows it, "
                "and it is recorded with the model so extraction applies it)"
            )


def _check_masking_fits_clips(model: Wav2Vec2Config, data: DataConfig) -> None:
    def frames(samples: int) -> int:
        return int(frame_lengths(torch.tensor([samples]), model.feature_encoder.conv_layers)[0])

    mk, ob = model.masking, model.objective
    longest = frames(data.max_sample_size)
    shortest = frames(max(data.min_sample_size, model.receptive_field))
    if mk.mask_length >= longest:
        raise ConfigError(
            f"model.masking.mask_length ({mk.mask_length} frames) is not shorter than the "
            f"longest clip (data.max_sample_size={data.max_sample_size} samples = "
            f"{longest} frames)"
        )
    if not ob.num_negatives:
        return
    most = expected_masked(model, longest) - 1
    if ob.num_negatives > most:
        raise ConfigError(
            f"model.objective.num_negatives ({ob.num_negatives}) exceeds the other masked "
            f"frames a clip can supply (about {most} at data.max_sample_size="
            f"{data.max_sample_size}): lower it, or raise data.max_sample_size"
        )
    fewest = expected_masked(model, shortest) - 1
    if ob.num_negatives > fewest:
        log.warning(
            "model.objective.num_negatives=%d: batches of the shortest clips (%d frames) "
            "mask about %d other frames, so their distractors repeat (as in fairseq's BASE "
            "recipe)",
            ob.num_negatives,
            shortest,
            fewest,
        )


def expected_masked(model: Wav2Vec2Config, num_frames: int, draws: int = 32) -> int:
    """Masked frames of a clip of ``num_frames`` frames under the model's masking, averaged
    over a few seeded draws."""
    mk = model.masking
    mask = compute_span_mask(
        torch.full((draws,), num_frames),
        num_frames,
        mask_prob=mk.mask_prob,
        mask_length=mk.mask_length,
        min_masks=mk.min_masks,
        noise=Noise(torch.Generator().manual_seed(0)),
        require_same_masks=False,
    )
    return int(mask.sum(1).float().mean())


def accumulation_for(data: DataConfig, trainer: pl.Trainer, requested: int) -> tuple[int, str]:
    """Gradient accumulation from ``data.audio_per_update`` (or as requested), and the line
    that says how much audio an update holds."""
    if not isinstance(requested, int) or requested < 1:
        raise ConfigError(
            f"trainer.accumulate_grad_batches: must be a positive integer (micro-batches per "
            f"update), got {requested}"
        )
    world, budget, rate = trainer.world_size, data.max_tokens, data.sample_rate
    per_pass = world * budget / rate  # seconds, at most, of one micro-batch on every device
    asked = data.audio_seconds_per_update
    accumulate = requested
    if asked is not None:
        derived = max(1, round(asked / per_pass))
        if requested not in (1, derived):
            raise ConfigError(
                f"trainer.accumulate_grad_batches={requested} and data.audio_per_update="
                f"{asked:g}s (= {derived} here) disagree: set one"
            )
        accumulate = derived
    seconds = per_pass * accumulate
    line = (
        f"audio per update: {trainer.num_nodes} node(s) x {trainer.num_devices} device(s) x "
        f"accumulation {accumulate} x {budget:,} samples = up to {seconds / 3600:.2f} h "
        f"({seconds:,.0f} s)"
    )
    if asked is not None:
        line += f"; asked for {asked / 3600:.2f} h"
    return accumulate, line
