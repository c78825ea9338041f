"""Is the data the bottleneck? Per-update loader wait, padding and cropping, peak memory, and
what the end-of-run summary advises from them.

Everything here is host arithmetic: the loader times its own ``next`` (`TimedDataLoader`) and
the collator counts samples (``Batch.read_samples``, ``kept_samples``), so monitoring adds no
host-device synchronisation to the step.
"""

from __future__ import annotations

import os
import resource
import statistics
from array import array
from dataclasses import dataclass, field

import torch

WAIT_ADVICE = 0.1
"""A median ``train/data_wait_fraction`` above this: the summary says loading held training
back."""
WASTE_ADVICE = 0.2
"""Padding or cropped-away audio above this share: the summary says how to waste less."""


def peak_memory_mib(device: torch.device) -> float:
    """The process's peak memory so far, MiB: CUDA's max allocated on a CUDA device (an
    allocator counter, no synchronisation), else the resident set's high-water mark."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def cores_per_process(processes_per_node: int) -> int:
    """CPU cores this process may use, shared among the node's training processes."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, processes_per_node))


@dataclass
class DataCounts:
    """What one update's micro-batches add up to on this rank (host numbers)."""

    data_wait: float = 0.0
    read_samples: int = 0
    kept_samples: int = 0
    padding_samples: int = 0

    def add(self, batch) -> None:
        """Count one micro-batch (a `Batch`)."""
        self.data_wait += batch.data_wait
        self.read_samples += batch.read_samples
        self.kept_samples += batch.kept_samples
        self.padding_samples += batch.padding_samples


@dataclass
class DataStats:
    """The run's per-update data figures (this rank's), for TensorBoard and the summary."""

    wait_fractions: array = field(default_factory=lambda: array("d"))
    read_samples: int = 0
    kept_samples: int = 0
    padding_samples: int = 0

    def record(self, sums: DataCounts, update_seconds: float) -> dict[str, float]:
        """Add one update; its ``train/`` metrics (fractions in [0, 1])."""
        wait = min(1.0, sums.data_wait / update_seconds) if update_seconds > 0 else 0.0
        self.wait_fractions.append(wait)
        self.read_samples += sums.read_samples
        self.kept_samples += sums.kept_samples
        self.padding_samples += sums.padding_samples
        held = sums.kept_samples + sums.padding_samples
        return {
            "train/data_wait_fraction": wait,
            "train/padding_fraction": sums.padding_samples / held if held else 0.0,
            "train/cropped_fraction": (
                1 - sums.kept_samples / sums.read_samples if sums.read_samples else 0.0
            ),
        }

    @property
    def median_wait(self) -> float:
        return statistics.median(self.wait_fractions) if self.wait_fractions else 0.0

    @property
    def padding_fraction(self) -> float:
        held = self.kept_samples + self.padding_samples
        return self.padding_samples / held if held else 0.0

    @property
    def cropped_fraction(self) -> float:
        return 1 - self.kept_samples / self.read_samples if self.read_samples else 0.0

    def advice(
        self, *, num_workers: int, cores: int, collate: str, bad_files: int = 0
    ) -> list[str]:
        """Summary lines: whether loading held training back and what to change; whether
        padding or cropping wasted much audio. Empty when neither."""
        lines = []
        if len(self.wait_fractions) and self.median_wait > WAIT_ADVICE:
            if num_workers < cores:
                more = min(cores, max(2, 2 * num_workers))
                change = (
                    f"data.num_workers={more} (now {num_workers}; {cores} cores per training "
                    "process here)"
                )
            else:
                change = (
                    f"the {num_workers} workers already use the {cores} cores per process: the "
                    "storage is the limit; put the corpus on local disk or in fewer, larger "
                    "files"
                )
            lines.append(
                f"loading held training back: the step waited for data a median "
                f"{self.median_wait:.0%} of each update (train/data_wait_fraction). Try "
                f"{change}; long files are already read by their window only"
            )
            if bad_files:
                lines.append(
                    f"{bad_files} file(s) failed to decode in training and cost their reads: "
                    "data.verify=decode finds them once, at set-up (recorded for later runs)"
                )
        if self.padding_fraction > WASTE_ADVICE:
            lines.append(
                f"padding: {self.padding_fraction:.0%} of the batches were zeros "
                "(train/padding_fraction) that cost compute: data.collate=crop pads nothing, "
                "or a smaller data.max_tokens makes the length buckets narrower"
            )
        if self.cropped_fraction > WASTE_ADVICE:
            lines.append(
                f"cropping: data.collate={collate} threw away {self.cropped_fraction:.0%} of "
                "the audio read (train/cropped_fraction): batches mix lengths; a smaller "
                "data.max_tokens makes the length buckets narrower, a larger "
                "data.min_sample_size drops the short clips that crop the rest, "
                "data.collate=pad keeps every sample (as padding)"
            )
        return lines
