"""Data-loader throughput: decode + crop + collate, in audio-seconds per second per worker.

Runs the real dataset and collator in this one process (what one DataLoader worker does) over a
manifest of FLAC files, and prints the real-time factor. Goal: >= 200x real time per worker.

    python scripts/bench_data.py [--manifest data/manifests/train.tsv] [--batches 200]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from w2v2_pretrain.data.dataset import AudioDataset, Collator
from w2v2_pretrain.data.manifest import read_manifest
from w2v2_pretrain.data.sampler import BucketBatchSampler


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", default="data/manifests/train.tsv")
    p.add_argument("--max-tokens", type=int, default=1_400_000)
    p.add_argument("--max-sample-size", type=int, default=250_000)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--collate", default="crop", choices=["crop", "pad"])
    args = p.parse_args()

    ds = AudioDataset(read_manifest(args.manifest), max_sample_size=args.max_sample_size)
    collate = Collator(args.collate)
    sampler = BucketBatchSampler(ds.sizes, args.max_tokens)
    decoded = batched = 0
    rates = []
    for epoch in range(args.epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        seconds = 0.0
        for keys in sampler:
            items = [ds[k] for k in keys]
            batch = collate(items)
            seconds += sum(len(u.wav) for u in items) / ds.sample_rate
            batched += batch.source.numel()
            decoded += len(items)
        rates.append(seconds / (time.perf_counter() - start))
    print(f"manifest: {args.manifest} ({len(ds)} files, collate={args.collate})")
    print(f"decoded {decoded} files, {batched / ds.sample_rate / 3600:.2f} h batched")
    print(
        f"throughput per worker: {np.median(rates):.0f}x real time "
        f"(median of {args.epochs} epochs; min {min(rates):.0f}x, max {max(rates):.0f}x)"
    )


if __name__ == "__main__":
    main()
