"""Probe results as people read them: a table (model x layer x probe), JSON records, and a
picture of each probe against the layer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from w2v2_pretrain.probes.run import PROBES, ProbeReport

FORMATS = {
    "cer": "{:.3f}",
    "speaker_acc": "{:.3f}",
    "rankme": "{:.1f}",
    "silhouette": "{:.3f}",
    "cluster_ppl": "{:.1f}",
}


def format_table(reports: Sequence[ProbeReport]) -> str:
    """One row per model and layer, one column per probe that ran (``-``: not measured)."""
    present = [p for p in PROBES if any(r.probe == p for rep in reports for r in rep.records)]
    header = ["model", "layer", *present]
    rows = []
    for rep in reports:
        for layer in rep.layers():
            cells = [rep.model, str(layer)]
            for p in present:
                v = rep.value(p, layer)
                cells.append("-" if v is None else FORMATS.get(p, "{:.4g}").format(v))
            rows.append(cells)
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    lines = [
        "  ".join(
            h.ljust(w) if i == 0 else h.rjust(w)
            for i, (h, w) in enumerate(zip(header, widths, strict=True))
        )
    ]
    for r in rows:
        lines.append(
            "  ".join(
                c.ljust(w) if i == 0 else c.rjust(w)
                for i, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
    return "\n".join(lines)


def skipped_lines(reports: Sequence[ProbeReport]) -> list[str]:
    """``skipped cer: <why>`` once per probe skipped (the probe set decides, so it is the same
    for every model)."""
    seen: dict[str, str] = {}
    for rep in reports:
        seen.update(rep.skipped)
    return [f"skipped {p}: {why}" for p, why in seen.items()]


def write_json(reports: Sequence[ProbeReport], path: str | Path) -> Path:
    """A list of ``{"model", "layer", "probe", "value"}`` records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for rep in reports for r in rep.records]
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path


def layer_figure(report: ProbeReport, step: int | None = None):
    """Each probe that ran against the layer (CER, speaker accuracy, effective rank), one
    panel each, for TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [p for p in ("cer", "speaker_acc", "rankme") if report.best(p) is not None]
    fig, axes = plt.subplots(1, max(len(shown), 1), figsize=(3.2 * max(len(shown), 1), 2.6))
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
