"""The data path at corpus scale: set-up cost against manifest size, and long-file crops.

    python scripts/benchmark_data.py                      # 10k, 100k, 1M, 10M entries + crops
    python scripts/benchmark_data.py --sizes 10000 100000 --crop-files 2

Manifests of N lines are written to a temporary folder (paths need not exist for the parse,
index and sampler figures: no 10M real files are built); each size runs in a process of its
own, so its resident set is its own. Figures per size:

- ``parse s``: `read_manifest` of the N-line file (vectorised, columns).
- ``B/utt``: growth of the process's resident set over the parse, per utterance.
- ``sampler s``: one epoch of `BucketBatchSampler` (sort, cut, deal, iterate every batch).
- ``worker MB``: unique memory (USS) growth of one forked loader worker reading every entry's
  path and length once over the epoch (what copy-on-access growth would show).

The start-up figure (``--startup``): N hard links to the demo corpus's files (so the figure
needs no N real files' worth of disk), a manifest of them, and a valid header-verify record
beside it, written from a real header read of each distinct file and one stat of every link
(a real header scan of 10M links would take ~10 minutes and measure the same record). Then,
in a fresh process, `AudioDataModule.setup` of that split as a run starts: parse, read the
record, stat every file against it, apply the run's settings; seconds and peak RSS.

The crop figure: ``--crop-seconds`` crops from ``--crop-minutes``-long FLAC files, audio-seconds
of crops per second in one process, reading the whole file then cropping (before) and reading
only the window (after).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def rss() -> int:
    with open("/proc/self/status") as f:
        return next(int(x.split()[1]) * 1024 for x in f if x.startswith("VmRSS"))


def uss(pid: int) -> int:
    """Unique set size (private pages) of a process, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        return sum(int(x.split()[1]) * 1024 for x in f if x.startswith("Private_"))


def write_manifest(path: Path, n: int, root: Path) -> None:
    """N LibriSpeech-like lines (``spk/chapter/spk-chapter-utt.flac<TAB>samples``)."""
    lengths = np.random.default_rng(0).integers(16_000, 400_000, size=n)
    with open(path, "w") as f:
        f.write(f"{root}\n")
        for lo in range(0, n, 1_000_000):
            f.write(
                "".join(
                    f"{i // 100_000}/{i // 100 % 1000}/{i // 100_000}-{i // 100 % 1000}-"
                    f"{i:08d}.flac\t{lengths[i]}\n"
                    for i in range(lo, min(n, lo + 1_000_000))
                )
            )


def one_size(path: Path) -> dict:
    """The figures of one manifest, in this process."""
    from w2v2_pretrain.data.sampler import BucketBatchSampler
    from w2v2_pretrain.data.tsv import read_manifest

    base = rss()
    t = time.perf_counter()
    m = read_manifest(path)
    parse = time.perf_counter() - t
    per_utt = (rss() - base) / len(m)
    sizes = np.minimum(m.samples_at(16_000), 250_000)
    t = time.perf_counter()
    sampler = BucketBatchSampler(sizes, 1_400_000, seed=1)
    batches = sum(1 for _ in sampler)
    epoch = time.perf_counter() - t
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # a loader worker: touch every entry once, as an epoch of reads does
        os.close(read)
        start = uss(os.getpid())
        total = 0
        for i in range(len(m)):
            total += len(m.path(i)) + int(m.num_samples[i])
        os.write(write, json.dumps([start, uss(os.getpid())]).encode())
        os._exit(0)
    os.close(write)
    start, end = json.loads(os.read(read, 100))
    os.waitpid(pid, 0)
    return {
        "entries": len(m),
        "parse_s": parse,
        "bytes_per_utt": per_utt,
        "columns_bytes_per_utt": m.nbytes / len(m),
        "sampler_epoch_s": epoch,
        "batches": batches,
        "worker_growth_mb": (end - start) / 2**20,
    }


def build_linked_corpus(folder: Path, n: int) -> Path:
    """N hard links (100 per folder) cycling over the demo corpus's files, train.tsv and a
    valid.tsv of the first 1,000, and the train manifest's header-verify record."""
    import soundfile as sf

    from w2v2_pretrain.data.config import VerifyLevel
    from w2v2_pretrain.data.record import save_record
    from w2v2_pretrain.data.scan import Scan, stat_files
    from w2v2_pretrain.data.tsv import read_manifest

    sources = sorted((REPO / "data" / "demo").rglob("*.flac"))
    infos = [sf.info(str(f)) for f in sources]
    per = 60_000  # hard links per file stay under ext4's 65,000
    root = folder / "audio"
    lines = []
    for i in range(n):
        rel = f"{i // 100_000}/{i // 100 % 1000}/{i:08d}.flac"
        if i % 100 == 0:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i // per % len(sources)], root / rel)
        lines.append(f"{rel}\t{infos[i // per % len(sources)].frames}\n")
    for name, part in (("train", lines), ("valid", lines[:1000])):
        with open(folder / f"{name}.tsv", "w") as f:
            f.write(f"{root}\n")
            f.writelines(part)
    m = read_manifest(folder / "train.tsv")
    which = np.arange(n) // per % len(sources)
    scan = Scan.empty(VerifyLevel.header, n)
    scan.frames[:] = np.array([i.frames for i in infos])[which]
    scan.sample_rates[:] = np.array([i.samplerate for i in infos])[which]
    scan.channels[:] = np.array([i.channels for i in infos])[which]
    found = stat_files(m)
    scan.file_sizes[:], scan.file_mtimes[:] = found.sizes, found.mtimes
    save_record(m.source, scan)
    return folder


def startup(folder: Path) -> dict:
    """One `AudioDataModule.setup` of the train split with a valid record, in this process."""
    import resource

    from w2v2_pretrain.data.config import DataConfig
    from w2v2_pretrain.data.datamodule import AudioDataModule

    cfg = DataConfig(manifest_dir=str(folder), verify="header", min_sample_size=0)
    t = time.perf_counter()
    dm = AudioDataModule(cfg)
    n = len(dm._load("train"))
    return {
        "entries": n,
        "startup_s": time.perf_counter() - t,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def crop_rate(files: list[Path], crop: int, windowed: bool, reps: int) -> float:
    """Audio-seconds of crops per second of reading."""
    from w2v2_pretrain.data.audio import read_audio
    from w2v2_pretrain.data.dataset import crop_start

    t = time.perf_counter()
    for r in range(reps):
        for k, f in enumerate(files):
            seed = (1, r, k)
            if windowed:
                wav = read_audio(f, crop=crop, start_of=lambda n, s=seed: crop_start(n, crop, s))
            else:
                wav = read_audio(f)
                start = crop_start(len(wav), crop, seed)
                wav = wav[start : start + crop]
    return reps * len(files) * crop / 16_000 / (time.perf_counter() - t)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000, 10**7])
    p.add_argument("--startup", type=int, nargs="*", default=[1_000_000, 10**7])
    p.add_argument("--crop-files", type=int, default=3)
    p.add_argument("--crop-minutes", type=float, default=10.0)
    p.add_argument("--crop-seconds", type=float, default=15.6)
    p.add_argument("--one", help=argparse.SUPPRESS)
    p.add_argument("--one-startup", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one_size(Path(args.one))))
        return
    if args.one_startup:
        print(json.dumps(startup(Path(args.one_startup))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.sizes:
            print(
                "| entries | parse s | B/utt (RSS) | columns B/utt | sampler epoch s | worker MB |"
            )
            print("|---:|---:|---:|---:|---:|---:|")
        for n in args.sizes:
            path = tmp / f"{n}.tsv"
            write_manifest(path, n, tmp)
            out = subprocess.run(
                [sys.executable, __file__, "--one", str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout)
            print(
                f"| {n:,} | {r['parse_s']:.2f} | {r['bytes_per_utt']:.0f} | "
                f"{r['columns_bytes_per_utt']:.0f} | {r['sampler_epoch_s']:.2f} | "
                f"{r['worker_growth_mb']:.1f} |",
                flush=True,
            )
            path.unlink()
        if args.startup:
            print("\n| entries | start-up s (valid header record) | peak RSS GB |")
            print("|---:|---:|---:|")
        for n in args.startup:
            folder = build_linked_corpus(Path(tempfile.mkdtemp(dir=tmp)), n)
            out = subprocess.run(
                [sys.executable, __file__, "--one-startup", str(folder)],
                capture_output=True,
                text=True,
                check=True,
            )
            r = json.loads(out.stdout.strip().splitlines()[-1])
            print(f"| {n:,} | {r['startup_s']:.1f} | {r['peak_rss_gb']:.2f} |", flush=True)
            shutil.rmtree(folder)
        if args.crop_files:
            import soundfile as sf

            rng = np.random.default_rng(0)
            files = []
            for k in range(args.crop_files):
                f = tmp / f"long{k}.flac"
                n = int(args.crop_minutes * 60 * 16_000)
                sf.write(f, (0.1 * rng.standard_normal(n)).astype(np.float32), 16_000)
                files.append(f)
            crop = int(args.crop_seconds * 16_000)
            before = crop_rate(files, crop, windowed=False, reps=1)
            after = crop_rate(files, crop, windowed=True, reps=10)
            print(
                f"\n{args.crop_seconds}-s crops of {args.crop_minutes}-min FLAC files, one "
                f"process: whole file then crop {before:.1f} audio-s/s; window only "
                f"{after:.1f} audio-s/s ({after / before:.0f}x)"
            )


if __name__ == "__main__":
    main()
