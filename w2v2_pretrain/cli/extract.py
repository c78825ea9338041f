"""``w2v2-extract MODEL INPUT OUT_DIR``: one (T, D) ``.npy`` of representations per utterance."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import DataError


def _save(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npy")
    np.save(tmp, array)
    os.replace(tmp, path)


@friendly_errors
def main(argv: list[str] | None = None) -> None:
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
    args = p.parse_args(argv)

    from w2v2_pretrain.checkpoint import load_model
    from w2v2_pretrain.data.audio import normalize, read_audio
    from w2v2_pretrain.data.manifest import read_manifest

    model = load_model(args.model).to(args.device)
    contract = model.cfg.input
    normalize_input = contract.normalize if args.normalize is None else args.normalize
    depth = model.cfg.context_network.num_layers
    if args.layer is not None and not 1 <= args.layer <= depth:
        raise DataError(f"--layer {args.layer}: the model has layers 1..{depth}")
    src = Path(args.input)
    if src.suffix == ".tsv":
        manifest = read_manifest(src)
        jobs = [
            (
                manifest.audio_path(i),
                manifest.entries[i].num_samples,
                manifest.where(i),
                Path(manifest.entries[i].path).with_suffix(".npy"),
            )
            for i in range(len(manifest))
        ]
    else:
        jobs = [(src, None, str(src), Path(src.stem + ".npy"))]
    out_dir = Path(args.out_dir)
    for path, expected, where, rel in jobs:
        wav = read_audio(path, contract.sample_rate, expected_samples=expected, where=where)
        if len(wav) < model.cfg.receptive_field:
            raise DataError(
                f"{where}: {len(wav)} samples, shorter than the feature encoder's "
                f"receptive field ({model.cfg.receptive_field} samples)"
            )
        if normalize_input:
            wav = normalize(wav)
        with torch.inference_mode():
            feats = model.extract(
                torch.from_numpy(wav)[None].to(args.device), num_layers=args.layer
            )
        _save(out_dir / rel, feats.hidden[0].float().cpu().numpy())
    print(
        f"wrote {len(jobs)} files of dim {model.cfg.context_network.embed_dim} to {out_dir} "
        f"(input: {contract.sample_rate} Hz, normalized: {normalize_input})"
    )


if __name__ == "__main__":
    main()
