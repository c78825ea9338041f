"""``w2v2-manifest ROOT --dest DIR``: fairseq-format train/valid manifests of an audio tree."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.data.config import VerifyLevel
from w2v2_pretrain.data.manifest import LONGER, SHORTER, build_manifests
from w2v2_pretrain.data.record import verified_scan
from w2v2_pretrain.data.tsv import read_manifest


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="w2v2-manifest",
        description="Write DEST/train.tsv and DEST/valid.tsv (fairseq format) for every audio "
        "file under ROOT (LibriSpeech-style speaker/chapter/*.flac, any depth).",
    )
    p.add_argument("root", help="audio root directory")
    p.add_argument("--dest", required=True, help="output folder for train.tsv and valid.tsv")
    p.add_argument("--ext", default="flac", help="audio file extension (default: flac)")
    p.add_argument(
        "--valid-percent",
        type=float,
        default=0.01,
        help="fraction of files for valid.tsv, 0..1 (default: 0.01)",
    )
    p.add_argument("--seed", type=int, default=42, help="split seed (default: 42)")
    p.add_argument("--min-seconds", type=float, default=0.0, help="drop shorter files")
    p.add_argument("--max-seconds", type=float, default=None, help="drop longer files")
    p.add_argument("--workers", type=int, default=8, help="threads reading the files")
    p.add_argument(
        "--verify",
        choices=["header", "decode"],
        default="header",
        help="header: read headers only (fast); decode: decode every file in full, which also "
        "finds truncated FLACs (their header is intact), NaN/Inf and all-zero audio",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="exit with status 1 if any file or folder was skipped (unreadable audio, a "
        "symbolic link loop, a FIFO or device, a name a manifest cannot hold, ...)",
    )
    p.add_argument(
        "--relative-root",
        action="store_true",
        help="write the root relative to --dest, so the manifests move with the corpus",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    report = build_manifests(
        args.root,
        args.dest,
        ext=args.ext,
        valid_percent=args.valid_percent,
        seed=args.seed,
        min_seconds=args.min_seconds,
        max_seconds=args.max_seconds,
        workers=args.workers,
        progress=not args.quiet,
        relative_root=args.relative_root,
        decode=args.verify == "decode",
    )
    _record(args)
    for path, why in report.bad_files:
        print(f"skipped {path}: {why}", file=sys.stderr)
    print(
        f"train.tsv: {report.train} files, {report.train_seconds / 3600:.2f} h; "
        f"valid.tsv: {report.valid} files, {report.valid_seconds / 3600:.2f} h -> {args.dest}"
    )
    for reason in (SHORTER, LONGER):
        if report.skipped[reason]:
            print(f"skipped {report.skipped[reason]} files: {reason}")
    if report.bad_files:
        bad = sorted((k, n) for k, n in report.skipped.items() if k not in (SHORTER, LONGER))
        kinds = ", ".join(f"{n} {kind}" for kind, n in bad)
        print(
            f"skipped {len(report.bad_files)} files or folders ({kinds}; listed above)",
            file=sys.stderr,
        )
        if args.strict:
            sys.exit(1)


def _record(args: argparse.Namespace) -> None:
    """Write each manifest's verify record (what training reads instead of scanning again)."""
    for split in ("train", "valid"):
        manifest = read_manifest(Path(args.dest) / f"{split}.tsv")
        if len(manifest):
            verified_scan(manifest, VerifyLevel(args.verify), args.workers, not args.quiet)


if __name__ == "__main__":
    main()
