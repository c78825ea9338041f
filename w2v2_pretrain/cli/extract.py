"""``w2v2-extract MODEL INPUT OUT_DIR``: one (T, D) ``.npy`` of representations per utterance."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from w2v2_pretrain.atomic import atomic_open
from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import DataError

if TYPE_CHECKING:
    from w2v2_pretrain.models import Wav2Vec2Model


def _save(path: Path, array: np.ndarray) -> None:
    with atomic_open(path) as f:  # a killed extraction never leaves half a file
        np.save(f, array)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2v2-extract",
        description="Write the context network's output (or Transformer layer N) for every "
        "utterance as OUT_DIR/<path>.npy of shape (frames, dim).",
    )
    p.add_argument("model", help="checkpoint, model state file or transformers directory")
    p.add_argument("input", help="an audio file, or a manifest (.tsv)")
    p.add_argument("out_dir")
    p.add_argument(
        "--layer",
        type=int,
        default=None,
        help="output of Transformer layer N (1-based; default: the final output)",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="zero-mean unit-variance input; default: as the model was trained "
        "(its recorded input contract)",
    )
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


@dataclass(frozen=True)
class _Job:
    """One utterance to extract: its file, the manifest's length (None for a lone file), how
    errors name it, and its output path under OUT_DIR."""

    path: Path
    expected_samples: int | None
    where: str
    out: Path


def _jobs(src: Path) -> list[_Job]:
    """Every utterance of a manifest (``.tsv``), each written at its path; or the one file."""
    from w2v2_pretrain.data.manifest import read_manifest

    if src.suffix != ".tsv":
        return [_Job(src, None, str(src), Path(src.stem + ".npy"))]
    manifest = read_manifest(src)
    return [
        _Job(
            manifest.audio_path(i),
            entry.num_samples,
            manifest.where(i),
            Path(entry.path).with_suffix(".npy"),
        )
        for i, entry in enumerate(manifest.entries)
    ]


def _extract(
    model: Wav2Vec2Model, job: _Job, normalize_input: bool, layer: int | None, device: str
) -> np.ndarray:
    """(T, D) representations of one utterance."""
    from w2v2_pretrain.data.audio import normalize, read_audio

    cfg = model.cfg
    wav = read_audio(
        job.path, cfg.input.sample_rate, expected_samples=job.expected_samples, where=job.where
    )
    if len(wav) < cfg.receptive_field:
        raise DataError(
            f"{job.where}: {len(wav)} samples, shorter than the feature encoder's "
            f"receptive field ({cfg.receptive_field} samples)"
        )
    if normalize_input:
        wav = normalize(wav)
    with torch.inference_mode():
        feats = model.extract(torch.from_numpy(wav)[None].to(device), num_layers=layer)
    return feats.hidden[0].float().cpu().numpy()


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)

    from w2v2_pretrain.checkpoint import load_model

    model = load_model(args.model).to(args.device)
    contract = model.cfg.input
    normalize_input = contract.normalize if args.normalize is None else args.normalize
    depth = model.cfg.context_network.num_layers
    if args.layer is not None and not 1 <= args.layer <= depth:
        raise DataError(f"--layer {args.layer}: the model has layers 1..{depth}")
    jobs = _jobs(Path(args.input))
    out_dir = Path(args.out_dir)
    for job in jobs:
        _save(out_dir / job.out, _extract(model, job, normalize_input, args.layer, args.device))
    print(
        f"wrote {len(jobs)} files of dim {model.cfg.context_network.embed_dim} to {out_dir} "
        f"(input: {contract.sample_rate} Hz, normalized: {normalize_input})"
    )


if __name__ == "__main__":
    main()
