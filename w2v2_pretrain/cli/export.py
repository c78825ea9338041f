"""``w2v2-export MODEL OUT``: a transformers directory, or a fairseq checkpoint file."""

from __future__ import annotations

import argparse
from pathlib import Path

from w2v2_pretrain.atomic import atomic_dir, writable_dir
from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import DataError, W2V2Error
from w2v2_pretrain.interop.fairseq import export_fairseq
from w2v2_pretrain.interop.hf import export
from w2v2_pretrain.model_sources import read_model_source


def check_out(out: Path, fmt: str, overwrite: bool) -> None:
    """Refuse, before any work, an OUT that the export would clobber or cannot write.

    An existing fairseq file, or a non-empty folder, is replaced only with ``--overwrite``; a
    folder is replaced only if it is a transformers model folder (it holds ``config.json``),
    so a mistyped OUT never deletes unrelated files.
    """
    if fmt == "fairseq" and out.is_dir():
        raise DataError(f"OUT {out}: is a folder; the fairseq export writes one file")
    if fmt == "transformers" and out.exists() and not out.is_dir():
        raise DataError(f"OUT {out}: is a file; the transformers export writes a folder")
    if out.is_dir() and any(out.iterdir()):
        if not (out / "config.json").is_file():
            raise DataError(
                f"OUT {out}: a folder that is not a transformers model (no config.json); "
                "not replaced, even with --overwrite: choose another OUT"
            )
        if not overwrite:
            raise DataError(f"OUT {out}: exists; --overwrite replaces it")
    elif out.is_file() and not overwrite:
        raise DataError(f"OUT {out}: exists; --overwrite replaces it")
    writable_dir(out.absolute().parent, f"OUT {out}: its folder")


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="w2v2-export",
        description="Convert a model (w2v2-pretrain checkpoint or model state file, fairseq "
        "checkpoint, transformers directory) into a transformers directory "
        "(Wav2Vec2ForPreTraining.from_pretrained(OUT) loads it, with its "
        "preprocessor_config.json) or a fairseq checkpoint file (fairseq's "
        "checkpoint_utils.load_model_ensemble_and_task loads it).",
    )
    p.add_argument("model", help="checkpoint (.ckpt), model state file, fairseq .pt, or folder")
    p.add_argument("out", help="output directory (transformers) or file (fairseq)")
    p.add_argument(
        "--format",
        choices=["transformers", "fairseq"],
        default="transformers",
        help="what to write (default: transformers)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing OUT (a fairseq file, or a transformers model folder: one "
        "holding config.json; other folders are never replaced); the old one stays until the "
        "new one is complete",
    )
    args = p.parse_args(argv)
    check_out(Path(args.out), args.format, args.overwrite)
    source = read_model_source(args.model)
    model = source.model()
    n = sum(t.numel() for t in model.parameters())
    if args.format == "fairseq":
        out = export_fairseq(model, args.out, num_updates=source.num_updates or 0)
        print(
            f"wrote {out} ({n / 1e6:.1f}M parameters): fairseq "
            f"checkpoint_utils.load_model_ensemble_and_task(['{out}'])"
        )
        return
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise W2V2Error(
            "transformers is not installed: pip install 'w2v2-pretrain[export]'"
        ) from None
    with atomic_dir(args.out) as folder:  # a failed export leaves OUT as it was
        export(model, folder)
    out = Path(args.out)
    print(
        f"wrote {out} ({n / 1e6:.1f}M parameters): "
        f"transformers.Wav2Vec2ForPreTraining.from_pretrained('{out}')"
    )


if __name__ == "__main__":
    main()
