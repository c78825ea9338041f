"""Load a model from any of the forms it is saved in, and save a bare model state.

- a ``w2v2-pretrain`` training checkpoint (``*.ckpt`` written by Lightning);
- a model state file written by `save_model` (config + weights);
- a fairseq wav2vec 2.0 pretraining checkpoint (``wav2vec_small.pt``-style);
- a transformers directory (``config.json`` + weights) of a ``Wav2Vec2ForPreTraining``.

`read_model_source` tells the forms apart and hands each to its reader (`read_ours` here,
`w2v2_pretrain.interop` for the others); `config_for_init` merges a source's config with a
run's for continued pretraining. Files load with ``torch.load(weights_only=True)``
(`load_file`): nothing in a file can run code. The file primitives live in
`w2v2_pretrain.model_files` and are re-exported here.
"""

from __future__ import annotations

from pathlib import Path

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.errors import ConfigError, DataError
from w2v2_pretrain.interop.fairseq import from_fairseq, is_fairseq_checkpoint
from w2v2_pretrain.interop.hf import read_hf
from w2v2_pretrain.model_files import (
    STATE_FORMAT,
    ModelSource,
    atomic_save,
    check_weights_fit,
    load_file,
    read_ours,
)
from w2v2_pretrain.models import Wav2Vec2Config, Wav2Vec2Model
from w2v2_pretrain.models.config import FeatureEncoderMode, base, large

__all__ = [
    "ARCHITECTURE",
    "STATE_FORMAT",
    "InitTemperature",
    "ModelSource",
    "atomic_save",
    "check_weights_fit",
    "config_differences",
    "config_for_init",
    "load_file",
    "load_model",
    "read_model_source",
    "read_ours",
    "recipe_for",
    "save_model",
]


def save_model(model: Wav2Vec2Model, path: str | Path) -> None:
    """Write the config and weights atomically (see `atomic_save`)."""
    atomic_save(
        {"format": STATE_FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict()},
        path,
    )


# what a model's weights are shaped by: taken from the source when continuing to pretrain
ARCHITECTURE = {
    "feature_encoder.conv_layers",
    "feature_encoder.mode",
    "feature_encoder.conv_bias",
    "context_network.num_layers",
    "context_network.embed_dim",
    "context_network.ffn_dim",
    "context_network.num_heads",
    "context_network.layer_norm_first",
    "context_network.conv_pos",
    "context_network.conv_pos_groups",
    "quantizer.num_groups",
    "quantizer.num_vars",
    "quantizer.codevector_dim",
    "final_dim",
    "layer_norm_eps",
}


class InitTemperature(Choice):
    """Where the Gumbel temperature of a run started from a source's weights begins
    (``init_temperature``)."""

    end = "end"
    """Where the source's schedule left it: its floor, or where ``num_updates`` took it."""
    restart = "restart"
    """The schedule's start, as a fresh run."""


def recipe_for(source: Wav2Vec2Config, run: Wav2Vec2Config) -> Wav2Vec2Config:
    """The settings for what a source did not record and a run did not set: the run's, unless
    its encoder is of another kind than the source's; then the paper's recipe for the source's
    kind (BASE for group norm; LARGE for layer norm, whose feature penalty is 0: with 10 the
    layer-norm encoder's features can become constant and the codebooks collapse)."""
    mode = FeatureEncoderMode(source.feature_encoder.mode)
    if FeatureEncoderMode(run.feature_encoder.mode) == mode:
        return run
    return large() if mode == FeatureEncoderMode.layer_norm else base()


def config_for_init(
    source: ModelSource,
    run: Wav2Vec2Config,
    changed: set[str],
    temperature: InitTemperature | str = InitTemperature.end,
) -> Wav2Vec2Config:
    """The model config of a run that starts from ``source``'s weights.

    The architecture is the source's (``changed`` may not alter it); every other setting is
    the run's where the run set it (``changed``: dotted fields), else the source's where it
    recorded it, else `recipe_for`'s (the run's, or the recipe of the source's encoder kind).
    ``temperature`` (`InitTemperature` or its name): ``end`` starts the Gumbel schedule where
    the source's ended (its floor, or where ``num_updates`` left it), ``restart`` from the
    schedule's start.
    """
    temperature = InitTemperature.parse(temperature, "init_temperature")
    src, mine = source.config.flat(), run.flat()
    default = recipe_for(source.config, run).flat()
    known = set(src) if source.known is None else source.known
    merged = {}
    for key, value in src.items():
        if key in ARCHITECTURE:
            if key in changed and mine[key] != value:
                raise ConfigError(
                    f"model.{key}={mine[key]}: the architecture comes from init_from "
                    f"({key}={value}); only training settings (dropout, masking, LayerDrop, "
                    "loss weights, ...) can change"
                )
            merged[key] = value
        else:
            merged[key] = mine[key] if key in changed else value if key in known else default[key]
    cfg = Wav2Vec2Config.from_flat(merged)
    if temperature == InitTemperature.end:
        q = cfg.quantizer
        _, floor, decay = q.temperature
        reached = floor if source.num_updates is None else q.temperature_at(source.num_updates)
        q.temperature = [reached, floor, decay]
    return cfg.validate()


def read_model_source(path: str | Path) -> ModelSource:
    """Config and weights from any supported form (checked to fit each other)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: directory without config.json (not a transformers model)")
        return read_hf(path)
    obj = load_file(path)
    if is_fairseq_checkpoint(obj):
        return from_fairseq(obj, str(path))
    cfg, state, _ = read_ours(path, obj)
    check_weights_fit(cfg, state, str(path))
    steps = obj.get("global_step")
    return ModelSource(
        "w2v2-pretrain", cfg, state, None, int(steps) if steps is not None else None
    )


def config_differences(a: Wav2Vec2Config, b: Wav2Vec2Config) -> list[str]:
    """``model.field: a -> b`` for every model field that differs."""
    fa, fb = a.flat(), b.flat()
    return [f"model.{k}: {fa[k]} -> {fb[k]}" for k in fa if fa[k] != fb[k]]


def load_model(path: str | Path) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` in eval mode from a checkpoint, model state file, fairseq checkpoint
    or transformers directory."""
    return read_model_source(path).model().eval()
