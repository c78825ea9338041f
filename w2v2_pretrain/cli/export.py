"""``w2v2-export MODEL OUT_DIR``: a directory transformers loads as ``Wav2Vec2ForPreTraining``."""

from __future__ import annotations

import argparse

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import W2V2Error


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(
        prog="w2v2-export",
        description="Convert a w2v2-pretrain checkpoint (or model state file) into a "
        "transformers directory: Wav2Vec2ForPreTraining.from_pretrained(OUT_DIR) loads it.",
    )
    p.add_argument("model", help="checkpoint (.ckpt) or model state file")
    p.add_argument("out_dir", help="output directory (config.json + weights)")
    args = p.parse_args(argv)
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise W2V2Error(
            "transformers is not installed: pip install 'w2v2-pretrain[export]'"
        ) from None
    from w2v2_pretrain.checkpoint import load_model
    from w2v2_pretrain.interop.hf import export

    model = load_model(args.model)
    out = export(model, args.out_dir)
    n = sum(t.numel() for t in model.parameters())
    print(
        f"wrote {out} ({n / 1e6:.1f}M parameters): "
        f"transformers.Wav2Vec2ForPreTraining.from_pretrained('{out}')"
    )


if __name__ == "__main__":
    main()
