"""Continued pretraining (``init_from``): the run's model config merged with the source's.

`model_of_run` is the entry: the run's model config, and the source whose weights it starts
from. `config_for_init` does the merge (the architecture from the source, training settings
from the run where it set them, else from the source, else from `recipe_for`);
`fields_set_by_run` says which fields the run set itself; `model_for_init` picks the source
(the run's own checkpoint once it has one, so a requeue needs neither the original source nor
its download).
"""

from __future__ import annotations

from hydra.core.hydra_config import HydraConfig

from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.model_files import ModelSource
from w2v2_pretrain.model_sources import read_model_source
from w2v2_pretrain.models.config import FeatureEncoderMode, Wav2Vec2Config
from w2v2_pretrain.models.presets import base, large, preset
from w2v2_pretrain.training.config import InitTemperature, RunConfig, hydra_choice

ARCHITECTURE = frozenset(
    {
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
)
"""The dotted fields that shape a model's weights or its network (`Wav2Vec2Config.flat` names):
continued pretraining and resumes take them from the source, never from the run."""


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


def fields_set_by_run(
    model: Wav2Vec2Config, overrides: list[str], preset_name: str | None
) -> set[str]:
    """Dotted model fields this run sets itself: overridden on the command line (``overrides``:
    Hydra's task overrides), or departing from the chosen preset (``model=...``) in an
    experiment file."""
    changed = set()
    for override in overrides:
        key = override.lstrip("+~").split("=", 1)[0]
        if key.startswith("model."):
            changed.add(key[len("model.") :])
    run = model.flat()
    if preset_name:
        chosen = preset(preset_name).flat()
        changed |= {k for k, v in run.items() if chosen.get(k) != v}
    # a field the command line named covers the fields under it (model.masking=...)
    return {k for k in run if k in changed or any(k.startswith(c + ".") for c in changed)}


def model_for_init(
    model: Wav2Vec2Config,
    init_from: str,
    set_by_run: set[str],
    temperature: InitTemperature,
    resume_from: str | None,
) -> tuple[Wav2Vec2Config, ModelSource | None]:
    """The model config of a run started from ``init_from``, and the source whose weights it
    loads (None when resuming: the weights then come with the resumed checkpoint)."""
    source = read_model_source(resume_from or init_from)
    merged = config_for_init(
        source, model, set_by_run, InitTemperature.restart if resume_from else temperature
    )
    if resume_from:
        merged.quantizer.temperature = source.config.quantizer.temperature
        return merged, None
    return merged, source


def model_of_run(
    run: RunConfig, resume_from: str | None
) -> tuple[Wav2Vec2Config, ModelSource | None]:
    """The run's model config, and the source whose weights it starts from (None: the model
    starts from its initialisation, or from ``resume_from``'s weights)."""
    model = run.model.validate()
    if not run.init_from:
        return model, None
    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else []
    set_by_run = fields_set_by_run(model, overrides, hydra_choice("model"))
    return model_for_init(model, run.init_from, set_by_run, run.init_temperature, resume_from)
