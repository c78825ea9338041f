"""The pictures a run logs to TensorBoard: codebook usage, and each probe against the layer.

matplotlib is imported when a picture is drawn (with the file-only Agg backend), not when a
run starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from w2v2_pretrain.probes.run import ProbeReport


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def codebook_usage_figure(counts: np.ndarray, step: int):
    """Bar chart per codebook of how often each entry was chosen; collapse shows at a glance.

    Shape:
        counts: (G, V) choices per entry.
    """
    G, V = counts.shape
    fig, axes = _pyplot().subplots(G, 1, figsize=(10, 1.8 * G), squeeze=False)
    for g in range(G):
        freq = counts[g] / max(counts[g].sum(), 1)
        axes[g, 0].bar(np.arange(V), freq, width=1.0)
        axes[g, 0].set_ylabel(f"codebook {g}")
        axes[g, 0].set_title(
            f"{int((counts[g] > 0).sum())}/{V} entries used", fontsize=8, loc="right"
        )
        axes[g, 0].set_xlim(-0.5, V - 0.5)
    axes[-1, 0].set_xlabel("entry")
    fig.suptitle(f"codebook usage, step {step}")
    fig.tight_layout()
    return fig


def layer_figure(report: ProbeReport, step: int | None = None):
    """Each probe that ran against the layer (CER, speaker accuracy, effective rank), one
    panel each."""
    shown = [p for p in ("cer", "speaker_acc", "rankme") if report.best(p) is not None]
    panels = max(len(shown), 1)
    fig, axes = _pyplot().subplots(1, panels, figsize=(3.2 * panels, 2.6))
    axes = axes if hasattr(axes, "__len__") else [axes]
    layers = report.layers()
    for ax, probe in zip(axes, shown, strict=False):
        values = [report.value(probe, layer) for layer in layers]
        ax.plot(layers, values, marker="o")
        if probe == "speaker_acc" and "speaker_acc" in report.chance:
            ax.axhline(report.chance["speaker_acc"], color="grey", linestyle=":", label="chance")
            ax.legend(fontsize=7)
        ax.set_xlabel("layer")
        ax.set_title(probe, fontsize=9)
        ax.set_xticks(layers)
    fig.suptitle(f"probes per layer{'' if step is None else f', update {step}'}", fontsize=9)
    fig.tight_layout()
    return fig
