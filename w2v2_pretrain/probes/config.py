"""What a probe round probes and with what budget: `ProbeConfig` (plain data, no torch), the
``probe`` config node less its cadence (training/config.py adds that)."""

from __future__ import annotations

from dataclasses import dataclass

from w2v2_pretrain.errors import ConfigError


@dataclass(kw_only=True)
class ProbeConfig:
    """What is probed and with what budget."""

    layers: list[int] | None = None
    """Layers to probe: 0 is the Transformer's input, i the output of block i (None: all)."""
    max_seconds: float = 240.0
    """Audio in the probe set (validation split first, then a slice of train)."""
    held_out_fraction: float = 1 / 3
    """Share of each speaker's utterances held out for scoring."""
    seed: int = 0
    """Chooses the probe set and the label-free subsamples."""
    ctc_steps: int = 40
    """Full-batch AdamW steps of the CTC probe after its least-squares warm start."""
    ctc_lr: float = 0.05
    speaker_steps: int = 100
    """Full-batch AdamW steps of the speaker classifier (from zero weights)."""
    speaker_lr: float = 0.05
    weight_decay: float = 1e-4
    clusters: int = 32
    """k of the k-means for the silhouette and cluster perplexity."""
    cluster_frames: int = 1500
    """Frames clustered (the silhouette is quadratic in them)."""
    rank_frames: int = 20_000
    """Frames in the effective rank."""

    def validate(self, where: str = "probe") -> ProbeConfig:
        """Raise a one-line `ConfigError` naming ``where.field`` for a value out of range (the
        types are the schema's); return self."""
        for name in ("ctc_steps", "speaker_steps", "clusters", "cluster_frames", "rank_frames"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"{where}.{name}={getattr(self, name)}: expected >= 1")
        for name in ("ctc_lr", "speaker_lr", "max_seconds"):
            if not float(getattr(self, name)) > 0:
                raise ConfigError(f"{where}.{name}={getattr(self, name)}: expected > 0")
        if not 0 < self.held_out_fraction < 1:
            raise ConfigError(
                f"{where}.held_out_fraction={self.held_out_fraction}: expected 0 < f < 1"
            )
        return self

    def check_layers(self, num_layers: int, where: str = "probe.layers") -> list[int]:
        """The layers to probe of a model with ``num_layers`` blocks."""
        if self.layers is None:
            return list(range(num_layers + 1))
        bad = [x for x in self.layers if not 0 <= x <= num_layers]
        if bad:
            raise ConfigError(
                f"{where}: layer {bad[0]} does not exist; the model has 0..{num_layers}"
            )
        return sorted(set(self.layers))
