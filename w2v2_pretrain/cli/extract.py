"""``w2v2-extract MODEL INPUT OUT_DIR``: one (T, D) ``.npy`` of representations per utterance
(the work is w2v2_pretrain/extract.py)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from w2v2_pretrain.atomic import writable_dir
from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import DataError
from w2v2_pretrain.extract import WINDOWING, ExtractOptions, extract, jobs_for
from w2v2_pretrain.model_sources import load_model


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2v2-extract",
        description="Write the context network's output (or Transformer layer N) for every "
        "utterance as OUT_DIR/<path without its extension>.npy of shape (frames, dim); a "
        "manifest's paths are mirrored under OUT_DIR relative to its root.",
        epilog=WINDOWING,
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
    p.add_argument(
        "--max-seconds",
        type=float,
        default=600.0,
        help="refuse files longer than this unless --window-seconds is given: memory grows "
        "with the length (default: 600)",
    )
    p.add_argument(
        "--window-seconds",
        type=float,
        default=None,
        help="extract files longer than this in windows of this length, read from the file "
        "one window at a time (default: whole files). See the note below",
    )
    p.add_argument(
        "--window-overlap",
        type=float,
        default=2.0,
        help="seconds of audio each window also sees on either side; the frames there are "
        "taken from the neighbouring window (default: 2)",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: cuda if any)")
    return p


def _device(name: str | None) -> str:
    """The device to run on, checked: a GPU that is not there is one line, not a traceback."""
    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise DataError(f"--device {name}: not a device (cpu, cuda, cuda:N)") from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise DataError(f"--device {name}: no CUDA GPU is available here; use --device cpu")
        if dev.index is not None and dev.index >= count:
            raise DataError(f"--device {name}: this machine has {count} GPU(s), cuda:0..")
    elif dev.type != "cpu":
        raise DataError(f"--device {name}: only cpu and cuda are supported")
    return name


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    device = _device(args.device)
    out_dir = writable_dir(args.out_dir, "OUT_DIR")
    jobs = jobs_for(Path(args.input))

    model = load_model(args.model).to(device)
    opts = ExtractOptions(
        normalize=args.normalize,
        layer=args.layer,
        device=device,
        max_seconds=args.max_seconds,
        window_seconds=args.window_seconds,
        window_overlap=args.window_overlap,
    ).checked(model)
    for job in jobs:
        extract(model, job, out_dir / job.out, opts)
    print(
        f"wrote {len(jobs)} files of dim {model.cfg.context_network.embed_dim} to {out_dir} "
        f"(input: {model.cfg.input.sample_rate} Hz, normalized: {opts.normalize})"
    )


if __name__ == "__main__":
    main()
