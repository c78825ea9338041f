"""``w2v2-shard MANIFEST_DIR --dest OUT_DIR``: a manifest folder's splits as lhotse Shar shards."""

from __future__ import annotations

import argparse
import logging
import sys

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.data.shards.writer import write_shards


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="w2v2-shard",
        description="Write MANIFEST_DIR's train.tsv and valid.tsv as lhotse Shar shards under "
        "OUT_DIR (train/, valid/ and index.json), for data=shards data.shards=OUT_DIR (or the "
        "URL it is served or stored at).",
    )
    p.add_argument("manifest_dir", help="folder with train.tsv and valid.tsv (w2v2-manifest)")
    p.add_argument("--dest", required=True, help="output folder (must not hold shards yet)")
    p.add_argument(
        "--shard-size",
        type=int,
        default=1000,
        help="utterances per shard (default: 1000; ~250 MB of 15-s FLAC utterances)",
    )
    p.add_argument("--sample-rate", type=int, default=16_000, help="rate written (16000)")
    p.add_argument(
        "--min-seconds", type=float, default=0.0, help="leave out shorter clips (counted)"
    )
    p.add_argument("--seed", type=int, default=1, help="which utterances share a shard")
    p.add_argument("--workers", type=int, default=4, help="threads writing shards")
    p.add_argument(
        "--strict", action="store_true", help="exit with status 1 if any file was skipped"
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    return p.parse_args(argv)


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # the set-up check logs each file it skips; the summary below names them once
    logging.getLogger("w2v2_pretrain.data.verify").setLevel(logging.ERROR)
    reports = write_shards(
        args.manifest_dir,
        args.dest,
        shard_size=args.shard_size,
        seed=args.seed,
        sample_rate=args.sample_rate,
        min_sample_size=int(args.min_seconds * args.sample_rate),
        workers=args.workers,
        progress=not args.quiet,
    )
    skipped = 0
    for split, report in reports.items():
        for entry in report.bad_files:
            print(f"skipped {entry}", file=sys.stderr)
        skipped += len(report.bad_files)
        print(
            f"{split}: {report.utterances} utterances, {report.seconds / 3600:.2f} h in "
            f"{report.shards} shards -> {args.dest}/{split}"
        )
        for reason, n in sorted(report.skipped.items()):
            print(f"{split}: skipped {n} ({reason})")
    if skipped:
        print(f"skipped {skipped} files (listed above)", file=sys.stderr)
    if skipped and args.strict:
        sys.exit(1)


if __name__ == "__main__":
    main()
