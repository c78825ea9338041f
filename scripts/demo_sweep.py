"""Run named demo recipes and tabulate their validation curves.

Each recipe is a list of overrides on top of ``experiment=demo``; each runs through the real
command line into ``OUT/<name>`` (skipped if that run already finished), and the table lists,
per recipe, the wall time and the validation contrastive loss (and its distance below chance
ln(K+1)) and accuracy at each validation.

    python scripts/demo_sweep.py recipes.yaml --out sweeps/    # run, then print the table
    python scripts/demo_sweep.py recipes.yaml --out sweeps/ --table-only

``recipes.yaml``::

    K20: [model.objective.num_negatives=20]
    K20-aligned: [model.objective.num_negatives=20, data.crop_alignment=320]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from w2v2_pretrain.events import read_scalars


def curve(run: Path) -> dict[str, list[tuple[int, float]]]:
    return {t: v for t, v in read_scalars(run).items() if t.startswith("val/")}


def run_recipe(name: str, overrides: list[str], out: Path) -> float | None:
    run = out / name
    done = run / "done.json"
    if done.is_file():
        return json.loads(done.read_text())["seconds"]
    cmd = [sys.executable, "-m", "w2v2_pretrain.cli.pretrain", "experiment=demo", *overrides]
    cmd.append(f"hydra.run.dir={run}")
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
    seconds = time.perf_counter() - start
    (out / f"{name}.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        print(f"{name}: failed ({proc.stderr.strip().splitlines()[-1:]})", file=sys.stderr)
        return None
    done.write_text(json.dumps({"seconds": seconds, "overrides": overrides}))
    return seconds


def table(recipes: dict[str, list[str]], out: Path) -> str:
    rows = [
        "| recipe | overrides | wall s | val contrastive (below chance) / accuracy |",
        "|---|---|---:|---|",
    ]
    for name, overrides in recipes.items():
        done = out / name / "done.json"
        if not done.is_file():
            rows.append(f"| {name} | `{' '.join(overrides)}` | - | not run / failed |")
            continue
        seconds = json.loads(done.read_text())["seconds"]
        c = curve(out / name)
        chance = dict(c.get("val/contrastive_chance", []))
        acc = dict(c.get("val/accuracy", []))
        points = []
        for step, loss in c.get("val/contrastive", []):
            below = chance.get(step, math.nan) - loss
            points.append(f"{step}: {loss:.3f} ({below:+.2f}) / {acc.get(step, math.nan):.3f}")
        rows.append(f"| {name} | `{' '.join(overrides)}` | {seconds:.0f} | {'; '.join(points)} |")
    return "\n".join(rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("recipes", help="YAML mapping name -> list of overrides")
    p.add_argument("--out", default="sweeps", help="folder for the runs (default: sweeps)")
    p.add_argument("--table-only", action="store_true", help="print the table, run nothing")
    args = p.parse_args()
    recipes = yaml.safe_load(Path(args.recipes).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.table_only:
        for name, overrides in recipes.items():
            seconds = run_recipe(name, overrides, out)
            print(f"{name}: {'failed' if seconds is None else f'{seconds:.0f} s'}", flush=True)
    print(table(recipes, out))


if __name__ == "__main__":
    main()
