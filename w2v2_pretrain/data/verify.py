"""The set-up check of a manifest: which entries are usable, and why the others are skipped.

A `Scan` (scan.py; or the verify record, record.py) says what each file holds; the run's
settings (rate, channels, lengths) are applied to those columns at once, and only the entries
that fail are turned into messages. The words are the glossary's (w2v2_pretrain/data/__init__.py):
every entry left out is *skipped* and counted by its reason; the *bad files* among them are also
named.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from w2v2_pretrain.data.audio import AudioInfo, AudioProblem, format_problem
from w2v2_pretrain.data.config import BadFilePolicy, VerifyLevel
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.scan import Scan, scan_files
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.logs import run_logger

log = run_logger(__name__)  # every rank checks the same manifest: said once


def _format_problems(
    manifest: Manifest, scan: Scan, sample_rate: int, resample: bool, downmix: bool
) -> dict[int, AudioProblem]:
    """Entries whose header disagrees with the manifest or the run's settings (`format_problem`
    on the columns at once; only the failures become messages)."""
    known = scan.frames >= 0
    bad = known & (scan.frames != manifest.num_samples)  # also catches 0 frames
    if not downmix:
        bad |= known & (scan.channels > 1)
    if not resample:
        bad |= known & (scan.sample_rates != sample_rate)
    out = {}
    for i in np.flatnonzero(bad).tolist():
        info = AudioInfo(int(scan.frames[i]), int(scan.sample_rates[i]), int(scan.channels[i]))
        expected = int(manifest.num_samples[i])
        problem = format_problem(info, sample_rate, resample, downmix, expected)
        if problem is not None:
            out[i] = problem
    return out


def _too_short(length: int, sample_rate: int, receptive_field: int) -> AudioProblem:
    """A clip the feature encoder cannot make one frame of."""
    return AudioProblem(
        "too short",
        f"{length} samples at {sample_rate} Hz, shorter than the feature encoder's receptive "
        f"field ({receptive_field} samples)",
    )


@dataclass
class Skips:
    """What `check_manifest` skipped: every entry counted by its reason (``skipped``), and the
    bad files among them also named (``bad_files``: ``where: reason``)."""

    skipped: Counter = field(default_factory=Counter)
    bad_files: list[str] = field(default_factory=list)

    def bad_file(self, where: str, problem: AudioProblem, on_bad_file: BadFilePolicy) -> None:
        if on_bad_file == BadFilePolicy.error:
            raise DataError(f"{where}: {problem.detail} (data.on_bad_file=skip skips bad files)")
        log.warning("skipped %s: %s", where, problem.detail)
        self.bad_files.append(f"{where}: {problem.detail}")
        self.skipped[problem.kind] += 1

    def summarise(self, manifest: Manifest, kept: int) -> None:
        """Stop if nothing is left of a manifest that had entries; else log what was skipped."""
        if not kept and len(manifest):
            raise DataError(f"{manifest.name}: no usable entries (skipped {dict(self.skipped)})")
        if self.skipped:
            log.warning(
                "%s: kept %d of %d entries; skipped %s",
                manifest.name,
                kept,
                len(manifest),
                dict(self.skipped),
            )


def check_manifest(
    manifest: Manifest,
    min_sample_size: int,
    receptive_field: int,
    *,
    verify: VerifyLevel | bool | str = VerifyLevel.header,
    on_bad_file: BadFilePolicy | str = BadFilePolicy.error,
    workers: int = 8,
    progress: bool = False,
    sample_rate: int = 16_000,
    resample: bool = True,
    downmix: bool = True,
    scan: Scan | None = None,
) -> tuple[Manifest, Counter, list[str]]:
    """Return the usable entries, the count of what was skipped by reason, and the bad files
    among them (``where: reason``).

    Clips shorter than ``min_sample_size`` are skipped and counted. Files that are missing,
    unreadable, empty, of the wrong length (``verify=header`` reads every header), that fail to
    decode or hold NaN/Inf or only zeros (``verify=decode``), or that are shorter than the
    feature encoder's receptive field are bad files: a `DataError` naming the first one, or
    with ``on_bad_file=skip`` skipped, counted and named in the log. Files are checked in
    parallel threads (or ``scan`` says what a check found before). Lengths are compared at
    ``sample_rate`` (the rate the model sees): a header pass records each file's own rate, so
    an 8 kHz file counts its samples after resampling; without ``resample`` (or ``downmix``)
    another rate (or several channels) is a bad file.
    """
    verify = VerifyLevel.parse(verify, "data.verify")
    on_bad_file = BadFilePolicy.parse(on_bad_file, "data.on_bad_file")
    if scan is None:
        scan = scan_files(manifest, verify, workers, f"{verify} check" if progress else None)
    manifest = manifest.with_rates(scan.sample_rates)
    problems = _format_problems(manifest, scan, sample_rate, resample, downmix) | scan.problems
    lengths = manifest.samples_at(sample_rate)
    short = np.flatnonzero(lengths < receptive_field).tolist()
    for i in short:
        problems.setdefault(i, _too_short(int(lengths[i]), sample_rate, receptive_field))
    skips = Skips()
    for i in sorted(problems):
        skips.bad_file(manifest.where(i), problems[i], on_bad_file)
    is_bad = np.zeros(len(manifest), dtype=bool)
    is_bad[np.fromiter(problems, dtype=np.int64, count=len(problems))] = True
    keep = lengths >= min_sample_size
    too_small = int(np.count_nonzero(~keep & ~is_bad))
    keep &= ~is_bad
    if too_small:
        skips.skipped[f"shorter than min_sample_size={min_sample_size}"] += too_small
    kept = np.flatnonzero(keep)
    skips.summarise(manifest, len(kept))
    return manifest.select(kept), skips.skipped, skips.bad_files
