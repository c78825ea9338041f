"""``w2v2-export MODEL OUT``: a transformers directory, or a fairseq checkpoint file."""

from __future__ import annotations

import argparse

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import W2V2Error


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
    args = p.parse_args(argv)
    from w2v2_pretrain.checkpoint import read_model_source

    source = read_model_source(args.model)
    model = source.model()
    n = sum(t.numel() for t in model.parameters())
    if args.format == "fairseq":
        from w2v2_pretrain.interop.fairseq import export_fairseq

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
    from w2v2_pretrain.interop.hf import export

    out = export(model, args.out)
    print(
        f"wrote {out} ({n / 1e6:.1f}M parameters): "
        f"transformers.Wav2Vec2ForPreTraining.from_pretrained('{out}')"
    )


if __name__ == "__main__":
    main()
