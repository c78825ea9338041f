"""Typed settings of the pretraining data (config node ``data``).

Hydra composes ``data=...`` onto `DataConfig`, so a misspelt key or a value of the wrong type is
refused at composition; `DataConfig.validate` checks what types cannot (ranges, and settings
that must agree), naming the ``data.`` field.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from omegaconf import MISSING

from w2v2_pretrain.choice import Choice
from w2v2_pretrain.errors import ConfigError


class CollateMode(Choice):
    """How a batch of different lengths becomes one tensor (``data.collate``)."""

    crop = "crop"
    """Crop every clip to the shortest (fairseq's pretraining default: no padding)."""
    pad = "pad"
    """Zero-pad to the longest and pass the lengths (the model masks the padding)."""


class BadFilePolicy(Choice):
    """What a file that cannot be used does to the run (``data.on_bad_file``)."""

    error = "error"
    """Stop, naming the file (in training: with a checkpoint to resume from)."""
    skip = "skip"
    """Skip it, name it in the log and in ``bad_files.tsv``, count it, go on."""


class VerifyLevel(Choice):
    """How closely the setup checks every manifest entry (``data.verify``)."""

    none = "none"
    """Only that each file exists."""
    header = "header"
    """Read every header: unreadable, empty and wrong-length files (true means this)."""
    decode = "decode"
    """Decode every file in full: also truncated FLACs, NaN/Inf and all-zero audio."""

    @classmethod
    def parse(cls, value, field: str) -> VerifyLevel:
        if isinstance(value, bool):
            return cls.header if value else cls.none
        return super().parse(value, field)

    @property
    def rank(self) -> int:
        """0 none, 1 header, 2 decode: a scan at a higher rank answers a lower one."""
        return ("none", "header", "decode").index(self.value)


TEMPERATURE = "temperature"
"""``data.corpus_weights=temperature``: each corpus's share from its hours and an exponent."""
XLSR_ALPHA = 0.5
"""XLS-R's (and XLSR-53's) sampling exponent: ``data.sampling_alpha`` when not set."""


@dataclass(kw_only=True)
class DataConfig:
    """Where the audio is and how it becomes batches; fairseq's ``task`` and ``dataset``."""

    manifest_dir: Any = MISSING
    """A folder with ``train.tsv`` and ``valid.tsv`` (made by ``w2v2-manifest`` or fairseq's
    ``wav2vec_manifest.py``), or a list of such folders (several corpora, each with its root).
    None with ``shards``."""
    shards: Any = None
    """Instead of manifests (``data=shards``): a shard folder written by ``w2v2-shard``, or
    where it is served or stored: ``https://host/ls960``, ``s3://bucket/ls960`` (any URL
    fsspec opens, with its package installed), ``pipe:aws s3 cp s3://bucket/ls960/{} -``; or a
    list of them (several corpora). The batch plan deals shards to the ``num_workers`` loader
    workers of each rank: a resume keeps ``num_workers`` (and the world size) to continue the
    interrupted epoch exactly."""
    shard_retries: int = 3
    """Further tries of a shard read that failed (a dropped connection, a server away), each
    after twice the wait of the last (1 s, 2 s, 4 s); then the run stops, checkpointed."""
    shard_timeout: float = 30.0
    """Seconds a shard's connection may stay silent before its read counts as failed."""
    corpus_weights: Any = None
    """With several folders, each corpus's share of every epoch's training batches: a list of
    positive weights, one per folder (normalised; [3, 1]: three quarters from the first), or
    ``temperature``: corpus c's share is proportional to ``(hours_c / total) ** sampling_alpha``
    (XLS-R's language sampling), its hours as its manifest lists them (before the
    ``max_sample_size`` crop). None: each utterance once per epoch (natural proportions)."""
    sampling_alpha: float | None = None
    """With ``corpus_weights=temperature``: the exponent alpha in (0, 1]; 1 keeps the natural
    proportions, smaller values flatten them toward uniform (upsampling the small corpora).
    XLS-R (and XLSR-53) 0.5; None: 0.5."""
    sample_rate: int = 16_000
    """Rate the model expects (follows ``model.input.sample_rate``)."""
    normalize: bool = False
    """Zero mean / unit variance per utterance (follows ``model.input.normalize``)."""
    resample: bool = True
    """Resample other rates (true) or refuse them (false)."""
    downmix: bool = True
    """Average multi-channel audio (true) or refuse it (false)."""
    min_sample_size: int = 32_000
    """Shorter clips are skipped and counted; fairseq ``min_sample_size``. BASE 32000."""
    max_sample_size: int = 250_000
    """Longer clips are cropped; fairseq ``max_sample_size``. BASE 250000."""
    max_tokens: int = 1_400_000
    """Samples per batch per device; fairseq ``max_tokens``. BASE 1.4M, LARGE 1.2M."""
    max_batch_size: int | None = None
    """Optional cap on utterances per batch."""
    valid_max_tokens: int | None = None
    """Samples per validation batch (None: ``max_tokens``)."""
    audio_per_update: str | None = None
    """Audio per optimizer update, e.g. ``1.6h``, ``96min`` or ``5600s`` (a number: seconds);
    the gradient accumulation is derived from it and the devices. None: as
    ``trainer.accumulate_grad_batches`` says."""
    collate: CollateMode = CollateMode.crop
    """``crop`` to the shortest clip of the batch (fairseq's default) or ``pad``."""
    crop_alignment: int = 1
    """Random crops start at multiples of this many samples (1: anywhere, as fairseq; 320, the
    feature encoder's stride: a stretch of audio always maps to the same frames)."""
    num_workers: int = 6
    """DataLoader worker processes."""
    pin_memory: bool = True
    """Page-locked host batches (on CUDA only)."""
    persistent_workers: bool = True
    """Keep the workers between epochs (with num_workers > 0)."""
    seed: int = 1
    """Bucketing tie-breaks, batch order and random crops (follows the run's ``seed``)."""
    verify: VerifyLevel = VerifyLevel.header
    """At set-up: ``none`` (files exist), ``header`` (every header: corrupt, empty, wrong-length
    files) or ``decode`` (every sample: also truncated FLACs, NaN/Inf, silence)."""
    on_bad_file: BadFilePolicy = BadFilePolicy.skip
    """``skip`` a bad file (named in the log and the run's ``bad_files.tsv``, counted) or stop
    with an ``error`` (in training, with a checkpoint)."""

    @property
    def manifest_dirs(self) -> list[str]:
        """The manifest folders, one or several (none with ``shards``)."""
        return _one_or_many(self.manifest_dir)

    @property
    def shard_locations(self) -> list[str]:
        """The shard folders or URLs, one or several (none with manifests)."""
        return _one_or_many(self.shards)

    @property
    def corpora(self) -> list[str]:
        """Each corpus's manifest folder or shard location."""
        return self.manifest_dirs or self.shard_locations

    @property
    def audio_seconds_per_update(self) -> float | None:
        """``audio_per_update`` in seconds (None: not set)."""
        return parse_audio_amount(self.audio_per_update, "data.audio_per_update")

    @property
    def corpus_weight_list(self) -> list[float] | None:
        """``corpus_weights`` as explicit weights (None: natural or temperature sampling)."""
        weights = self.corpus_weights
        if weights is None or weights == TEMPERATURE:
            return None
        folders = len(self.corpora)
        if isinstance(weights, str) or not isinstance(weights, Sequence):
            raise ConfigError(
                "data.corpus_weights: expected a list of positive weights, one per manifest "
                f"folder ({folders}), or {TEMPERATURE}, got {weights!r}"
            )
        numbers = all(isinstance(w, (int, float)) and not isinstance(w, bool) for w in weights)
        if not numbers or len(weights) != folders or min(weights) <= 0:
            raise ConfigError(
                "data.corpus_weights: one positive weight per manifest folder "
                f"({folders}), got {list(weights)}"
            )
        return [float(w) for w in weights]

    @property
    def temperature_alpha(self) -> float | None:
        """The temperature exponent alpha with ``corpus_weights=temperature`` (else None)."""
        alpha = self.sampling_alpha
        if self.corpus_weights != TEMPERATURE:
            if alpha is not None:
                raise ConfigError(
                    f"data.sampling_alpha={alpha} is only used with "
                    f"data.corpus_weights={TEMPERATURE}; set both, or neither"
                )
            return None
        alpha = XLSR_ALPHA if alpha is None else alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha <= 1:
            raise ConfigError(
                f"data.sampling_alpha: must be in (0, 1] (XLS-R: {XLSR_ALPHA}; 1: natural "
                f"proportions), got {alpha!r}"
            )
        return float(alpha)

    def validate(self) -> DataConfig:
        """Raise a one-line `ConfigError` naming the first bad ``data.`` field; return self."""
        for name in ("sample_rate", "max_sample_size", "max_tokens", "crop_alignment"):
            _at_least(name, getattr(self, name), 1)
        for name in ("max_batch_size", "valid_max_tokens"):  # None: no limit of their own
            if getattr(self, name) is not None:
                _at_least(name, getattr(self, name), 1)
        for name in ("min_sample_size", "num_workers"):
            _at_least(name, getattr(self, name), 0)
        _at_least("seed", self.seed, None)
        if self.manifest_dirs and self.shard_locations:
            raise ConfigError(
                "data.shards: given with data.manifest_dir; train from one or the other "
                "(data=shards sets data.manifest_dir=null)"
            )
        if not self.corpora:
            raise ConfigError("data.manifest_dir: no manifest folder given (or data.shards)")
        _at_least("shard_retries", self.shard_retries, 0)
        if not (isinstance(self.shard_timeout, (int, float)) and self.shard_timeout > 0):
            raise ConfigError(f"data.shard_timeout: must be positive, got {self.shard_timeout}")
        _ = self.corpus_weight_list, self.temperature_alpha  # parse, or name the field
        if self.min_sample_size > self.max_sample_size:
            raise ConfigError(
                f"data.min_sample_size ({self.min_sample_size}) exceeds "
                f"data.max_sample_size ({self.max_sample_size})"
            )
        for budget in ("max_tokens", "valid_max_tokens"):
            value = getattr(self, budget)
            if value is not None and value < self.max_sample_size:
                raise ConfigError(
                    f"data.{budget} ({value}) is below data.max_sample_size "
                    f"({self.max_sample_size}): a clip cropped to max_sample_size would not fit "
                    "a batch; raise it or lower max_sample_size"
                )
        _ = self.audio_seconds_per_update  # parses, or names the field
        return self


def _one_or_many(value: Any) -> list[str]:
    """A setting given as one location or a list of them, as a list (None: empty)."""
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return [str(v) for v in value]
    return [str(value)]


def _at_least(name: str, value: Any, lowest: int | None) -> None:
    """``data.<name>`` is an integer of at least ``lowest`` (None: any integer)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise ConfigError(f"data.{name}: expected an integer, got {value!r}")
    if lowest is not None and value < lowest:
        raise ConfigError(f"data.{name}: must be {'positive' if lowest else '>= 0'}, got {value}")


def parse_audio_amount(value: float | str | None, field: str) -> float | None:
    """Seconds of audio from ``5600``, ``5600s``, ``96min``/``96m`` or ``1.6h`` (None stays)."""
    if value is None:
        return None
    text = str(value).strip().lower()
    units = {"h": 3600.0, "min": 60.0, "m": 60.0, "s": 1.0}
    scale = 1.0
    for suffix, factor in units.items():
        if text.endswith(suffix):
            text, scale = text[: -len(suffix)].strip(), factor
            break
    try:
        seconds = float(text) * scale
    except ValueError:
        raise ConfigError(
            f"{field}: expected an amount of audio such as 1.6h, 96min or 5600s, got {value!r}"
        ) from None
    if not seconds > 0:
        raise ConfigError(f"{field}: must be positive, got {value!r}")
    return seconds
