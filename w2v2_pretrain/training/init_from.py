"""Continued pretraining (``init_from``): the run's model config merged with the source's.

`config_for_init` (checkpoint.py) does the merge; this module says which fields the run set
itself, and picks the source (the run's own checkpoint once it has one, so a requeue needs
neither the original source nor its download).
"""

from __future__ import annotations

from w2v2_pretrain.checkpoint import (
    InitTemperature,
    ModelSource,
    config_for_init,
    read_model_source,
)
from w2v2_pretrain.models import Wav2Vec2Config
from w2v2_pretrain.models.config import preset


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
        base = preset(preset_name).flat()
        changed |= {k for k, v in run.items() if base.get(k) != v}
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
