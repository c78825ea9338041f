"""A run's TensorBoard scalars, read back from its event files (``RUN/tensorboard``)."""

from __future__ import annotations

from pathlib import Path


def read_scalars(run_dir: str | Path) -> dict[str, list[tuple[int, float]]]:
    """Every scalar tag of the run in ``run_dir``: tag -> [(update, value), ...] in the order
    written (a resumed run's events included)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"scalars": 0})
    ea.Reload()
    return {tag: [(e.step, e.value) for e in ea.Scalars(tag)] for tag in ea.Tags()["scalars"]}


def image_tags(run_dir: str | Path) -> list[str]:
    """The image tags of the run in ``run_dir`` (codebook usage, probe figures)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(Path(run_dir) / "tensorboard"), size_guidance={"images": 1})
    ea.Reload()
    return ea.Tags()["images"]
