"""Probe results as people read them: a table (model x layer x probe) and JSON records (the
picture of each probe against the layer is `w2v2_pretrain.figures.layer_figure`)."""

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


def write_json(reports: Sequence[ProbeReport], path: str | Path) -> Path:
    """A list of ``{"model", "layer", "probe", "value"}`` records."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    records = [asdict(r) for rep in reports for r in rep.records]
    path.write_text(json.dumps(records, indent=1) + "\n")
    return path
