"""Run every probe on a model's frozen layers: one pass of the probe set through the model, then
the probes per layer. Used by the training callback and by ``w2v2-probe``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from w2v2_pretrain.models import Wav2Vec2Model
from w2v2_pretrain.probes.characters import ctc_probe
from w2v2_pretrain.probes.config import ProbeConfig
from w2v2_pretrain.probes.label_free import cluster_quality, rankme, subsample
from w2v2_pretrain.probes.linear import LinearBudget
from w2v2_pretrain.probes.probe_set import ProbeSet
from w2v2_pretrain.probes.speakers import speaker_probe as fit_speaker_probe

PROBES = ("cer", "speaker_acc", "rankme", "silhouette", "cluster_ppl")
"""Every probe's record name: character error rate (lower is better), speaker accuracy,
effective rank, k-means silhouette and cluster-use perplexity (higher is better)."""


@dataclass(frozen=True)
class ProbeRecord:
    """One number: ``probe`` of ``model`` at ``layer``."""

    model: str
    layer: int
    probe: str
    value: float


@dataclass
class ProbeReport:
    """A probe round's records, what was skipped and why, and what it cost."""

    model: str
    records: list[ProbeRecord]
    skipped: dict[str, str]
    seconds: float
    """Wall time of the round (features + probes)."""
    feature_seconds: float
    chance: dict[str, float] = field(default_factory=dict)
    """Reference values: ``speaker_acc`` of always guessing the most frequent speaker."""

    def value(self, probe: str, layer: int) -> float | None:
        for r in self.records:
            if r.probe == probe and r.layer == layer:
                return r.value
        return None

    def layers(self) -> list[int]:
        return sorted({r.layer for r in self.records})

    def best(self, probe: str) -> ProbeRecord | None:
        found = [r for r in self.records if r.probe == probe]
        if not found:
            return None
        return (
            min(found, key=lambda r: r.value)
            if probe == "cer"
            else max(found, key=lambda r: r.value)
        )


@torch.inference_mode()
def layer_features(
    model: Wav2Vec2Model, audio: Sequence[np.ndarray], layers: Sequence[int]
) -> list[list[torch.Tensor]]:
    """Each utterance's frames at each layer, one utterance at a time (no padding, so the
    group-norm encoder sees exactly the utterance), with the model in eval mode.

    Shape:
        audio[i]: (L_i,) -> out[j][i]: (T_i, D) for layers[j], float32 on the model's device
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: list[list[torch.Tensor]] = [[] for _ in layers]
    try:
        for wav in audio:
            feats = model.layer_features(torch.from_numpy(wav)[None].to(device))
            for j, layer in enumerate(layers):
                out[j].append(feats.hidden[layer, 0].float().clone())
    finally:
        model.train(was_training)
    return out


def run_probes(
    model: Wav2Vec2Model,
    probe_set: ProbeSet,
    audio: Sequence[np.ndarray],
    config: ProbeConfig,
    name: str = "model",
) -> ProbeReport:
    """Every probe the set allows, on every chosen layer of ``model`` (left as it was).

    Draws nothing from torch's global generators (a round in a run leaves the run's random
    stream as it was): subsamples come from a generator seeded with ``config.seed``.
    """
    start = time.perf_counter()
    layers = config.check_layers(model.cfg.context_network.num_layers)
    device = next(model.parameters()).device
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        feats = layer_features(model, audio, layers)
        feature_seconds = time.perf_counter() - start
        records: list[ProbeRecord] = []
        chance: dict[str, float] = {}
        for layer, per_utt in zip(layers, feats, strict=True):
            generator = torch.Generator().manual_seed(config.seed)
            records += _probe_layer(name, layer, per_utt, probe_set, config, generator, chance)
    return ProbeReport(
        model=name,
        records=records,
        skipped=dict(probe_set.skipped),
        seconds=time.perf_counter() - start,
        feature_seconds=feature_seconds,
        chance=chance,
    )


def _probe_layer(
    name: str,
    layer: int,
    per_utt: list[torch.Tensor],
    probe_set: ProbeSet,
    config: ProbeConfig,
    generator: torch.Generator,
    chance: dict[str, float],
) -> list[ProbeRecord]:
    """Every probe on one layer's features.

    Shape:
        per_utt[i]: (T_i, D) frames of utterance i
    """
    utts = probe_set.utterances
    fit = [i for i, u in enumerate(utts) if not u.held_out]
    held = [i for i, u in enumerate(utts) if u.held_out]
    ctc_budget = LinearBudget(
        steps=config.ctc_steps, lr=config.ctc_lr, weight_decay=config.weight_decay
    )
    spk_budget = LinearBudget(
        steps=config.speaker_steps, lr=config.speaker_lr, weight_decay=config.weight_decay
    )
    out = []

    def record(probe: str, value: float) -> None:
        out.append(ProbeRecord(name, layer, probe, float(value)))

    if "cer" not in probe_set.skipped:
        f = [i for i in fit if utts[i].transcript]
        h = [i for i in held if utts[i].transcript]
        result = ctc_probe(
            [per_utt[i] for i in f],
            [utts[i].transcript for i in f],
            [per_utt[i] for i in h],
            [utts[i].transcript for i in h],
            ctc_budget,
        )
        record("cer", result.cer)
    if "speaker_acc" not in probe_set.skipped:
        f = [i for i in fit if utts[i].speaker is not None]
        h = [i for i in held if utts[i].speaker is not None]
        means = torch.stack([x.mean(0) for x in per_utt])  # (N, D)
        result = fit_speaker_probe(
            means[f],
            [utts[i].speaker for i in f],
            means[h],
            [utts[i].speaker for i in h],
            spk_budget,
        )
        record("speaker_acc", result.accuracy)
        chance["speaker_acc"] = result.chance
    frames = torch.cat(per_utt)  # (sum T, D)
    rank_rows = subsample(len(frames), config.rank_frames, generator).to(frames.device)
    record("rankme", rankme(frames[rank_rows]))
    clusters = cluster_quality(frames, config.clusters, config.cluster_frames, generator)
    record("silhouette", clusters.silhouette)
    record("cluster_ppl", clusters.perplexity)
    return out
