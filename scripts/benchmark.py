"""Training-step speed: ours against transformers' Wav2Vec2ForPreTraining on identical work.

Both models start from the same weights (our export), run the same batch with the same mask
and distractor indices, the same precision, AdamW, LayerDrop 0; their steps are interleaved
after a warm-up. Prints audio-seconds per second, ms per step split into forward / backward /
optimizer, peak memory (RSS on CPU, max allocated on CUDA; each measured in a process of its
own), FLOPs per audio-second (torch.utils.flop_counter), the achieved FLOP rate as a fraction
of the matrix-multiply rate measured in the same run and of the GPU's datasheet peak (MFU,
w2v2_pretrain/hardware.py; ``--peak-flops`` for another device), and the data path (decode + crop +
collate + mask planning) in audio-seconds per second per worker.

    python scripts/benchmark.py --preset base --batch 2 --seconds 5
    python scripts/benchmark.py --preset base --batch 8 --seconds 15.6 --device cuda \\
        --precision bf16 --json base_h100.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

import torch

from w2v2_pretrain.hardware import peak_flops
from w2v2_pretrain.interop.hf import to_hf_model
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.models.flops import step_flops
from w2v2_pretrain.models.masking import MaskPlan


@dataclass
class Timing:
    """Milliseconds per step and its parts, medians over the timed steps."""

    forward: float
    backward: float
    optimizer: float
    step: float
    steps: list[float] = field(default_factory=list)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulRate:
    """FLOP/s of an n x n x n matrix multiply (the machine's practical peak), sampled between
    the timed steps: a shared or throttled host changes speed, and a step is compared with the
    rate measured around it."""

    def __init__(self, device: torch.device, dtype: torch.dtype, n: int = 2048) -> None:
        self.device, self.n = device, n
        self.a = torch.randn(n, n, device=device, dtype=dtype)
        self.b = torch.randn(n, n, device=device, dtype=dtype)
        self.samples: list[float] = []
        self.sample(3)

    def sample(self, repeats: int = 2) -> float:
        """Measure now; return the best of these repeats."""
        now = []
        for _ in range(repeats):
            sync(self.device)
            start = time.perf_counter()
            self.a @ self.b
            sync(self.device)
            now.append(2 * self.n**3 / (time.perf_counter() - start))
        self.samples += now
        return max(now)

    @property
    def rate(self) -> float:
        return statistics.median(self.samples[3:] or self.samples)


def hf_negatives(plan: MaskPlan) -> torch.Tensor:
    """Our row-local distractor indices as transformers' (B, T, K) flat frame indices."""
    B, T = plan.mask.shape
    K = plan.distractors.shape[-1]
    flat = plan.indices + torch.arange(B)[:, None] * T
    out = torch.zeros(B, T, K, dtype=torch.long)
    rows = torch.arange(B)[:, None, None]
    out[rows, plan.indices[..., None], torch.arange(K)] = flat[rows, plan.distractors]
    return out


class Runner:
    """One implementation's model, optimizer and training step on a fixed batch."""

    def __init__(self, name: str, model, optimizer, forward) -> None:
        self.name, self.model, self.optimizer, self.forward = name, model, optimizer, forward

    def step(self, device: torch.device, autocast) -> tuple[float, float, float]:
        sync(device)
        t0 = time.perf_counter()
        with autocast():
            loss = self.forward()
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        sync(device)
        t3 = time.perf_counter()
        return (t1 - t0) * 1e3, (t2 - t1) * 1e3, (t3 - t2) * 1e3


def build(args, which: str, device: torch.device):
    """The runner for ``ours`` or ``transformers`` and the batch's audio seconds."""
    torch.manual_seed(0)
    cfg = preset(args.preset)
    cfg.context_network.layerdrop = 0.0
    cfg.context_network.checkpoint_activations = args.checkpoint_activations
    ours = Wav2Vec2Model(cfg)
    samples = int(args.seconds * cfg.input.sample_rate)
    gen = torch.Generator().manual_seed(1)
    source = torch.randn(args.batch, samples, generator=gen) * 0.1
    frames = ours.feature_encoder.output_lengths(torch.full((args.batch,), samples))
    plan = ours.draw_masks(frames, int(frames[0]))
    adamw = dict(lr=1e-4, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01)
    if which == "ours":
        model = ours.to(device).train()
        if args.compile:
            model.compile()
        on_device = plan.to(device)
        source = source.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), fused=True, **adamw)

        def forward():
            out = model(source, temperature=2.0, plan=on_device)
            return out.loss.total / out.loss.num_masked

    else:
        model = to_hf_model(ours).to(device).train()
        del ours  # only transformers' copy stays
        mask, negatives, source = (
            plan.mask.to(device),
            hf_negatives(plan).to(device),
            source.to(device),
        )
        optimizer = torch.optim.AdamW(model.parameters(), **adamw)  # transformers' default
        masked = float(plan.mask.sum())

        def forward():
            return (
                model(source, mask_time_indices=mask, sampled_negative_indices=negatives).loss
                / masked
            )

    return Runner(which, model, optimizer, forward), args.batch * args.seconds


def autocast_for(args, device: torch.device):
    if args.precision == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext


def peak_memory(which: str) -> float:
    """Peak memory in MiB of a process that builds one implementation and trains 3 steps."""
    cmd = [sys.executable, __file__, *sys.argv[1:], "--memory-of", which]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return float(out.strip().splitlines()[-1])


def measure_memory(args) -> None:
    """Peak of the training steps alone: CUDA's max allocated, or on Linux the resident set's
    high-water mark, reset after the model is built (building transformers' model passes
    through ours)."""
    import gc

    device = torch.device(args.device)
    runner, _ = build(args, args.memory_of, device)
    autocast = autocast_for(args, device)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM
    for _ in range(3):
        runner.step(device, autocast)
    if device.type == "cuda":
        print(torch.cuda.max_memory_allocated(device) / 2**20)
    else:
        with open("/proc/self/status") as f:
            status = f.read()
        peak_kib = next(
            int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM")
        )
        print(peak_kib / 1024)


def count_flops(runner: Runner, autocast) -> float:
    def forward() -> torch.Tensor:
        with autocast():
            return runner.forward()

    flops = step_flops(forward)
    runner.optimizer.zero_grad(set_to_none=True)
    return float(flops)


def data_path(manifest: str, seconds: float, batches: int) -> float:
    """Audio-seconds per second of one loader worker: decode, crop, collate and mask plan."""
    from w2v2_pretrain.data.collate import Collator, MaskPlanner
    from w2v2_pretrain.data.dataset import AudioDataset
    from w2v2_pretrain.data.sampler import BucketBatchSampler
    from w2v2_pretrain.data.tsv import read_manifest

    crop = int(seconds * 16_000)
    ds = AudioDataset(read_manifest(manifest), max_sample_size=crop)
    collate = Collator("crop", planner=MaskPlanner(preset("base"), seed=0))
    sampler = BucketBatchSampler(ds.sizes, 1_400_000)
    audio, elapsed, done = 0.0, 0.0, 0
    epoch = 0
    while done < batches:
        sampler.set_epoch(epoch)
        for keys in sampler:
            start = time.perf_counter()
            items = [ds[k] for k in keys]
            batch = collate(items)
            elapsed += time.perf_counter() - start
            audio += float(batch.lengths.sum()) / 16_000
            done += 1
            if done >= batches:
                break
        epoch += 1
    return audio / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base", choices=["tiny", "base", "large"])
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=5.0, help="seconds per utterance")
    p.add_argument("--device", default="cpu")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    p.add_argument("--steps", type=int, default=5, help="timed steps per implementation")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="torch.compile our model")
    p.add_argument("--checkpoint-activations", action="store_true")
    p.add_argument("--no-transformers", action="store_true", help="time ours only")
    p.add_argument("--manifest", default="data/manifests/train.tsv", help="for the data path")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument(
        "--peak-flops",
        type=float,
        default=None,
        help="the device's peak FLOP/s for MFU (default: the datasheet table for known GPUs)",
    )
    p.add_argument("--memory-of", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.memory_of:
        measure_memory(args)
        return
    device = torch.device(args.device)
    autocast = autocast_for(args, device)
    which = ["ours"] if args.no_transformers else ["ours", "transformers"]
    runners = {}
    for name in which:
        runners[name], audio = build(args, name, device)
    compile_seconds = None
    for name, runner in runners.items():
        start = time.perf_counter()
        for _ in range(args.warmup):
            runner.step(device, autocast)
        if name == "ours" and args.compile:
            compile_seconds = time.perf_counter() - start
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    matmul = MatmulRate(device, dtype)
    times: dict[str, list[tuple[float, float, float]]] = {n: [] for n in runners}
    rates: dict[str, list[float]] = {n: [] for n in runners}  # matmul rate right after each step
    for _ in range(args.steps):  # interleaved, with the matmul rate sampled in between
        for name, runner in runners.items():
            times[name].append(runner.step(device, autocast))
            rates[name].append(matmul.sample())
    rate = matmul.rate
    flops = count_flops(runners["ours"], autocast)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peak = args.peak_flops or peak_flops(device_name, args.precision)
    results = {
        "preset": args.preset,
        "batch": args.batch,
        "seconds_per_utterance": args.seconds,
        "device": str(device),
        "device_name": device_name,
        "peak_flops_per_second": peak,
        "threads": torch.get_num_threads(),
        "precision": args.precision,
        "compile": args.compile,
        "compile_seconds": compile_seconds,
        "checkpoint_activations": args.checkpoint_activations,
        "matmul_flops_per_second": rate,
        "matmul_samples": matmul.samples,
        "flops_per_step": flops,
        "flops_per_audio_second": flops / audio,
        "torch": torch.__version__,
        "implementations": {},
    }
    for name, rows in times.items():
        parts = list(zip(*rows, strict=True))
        step = [sum(r) for r in rows]
        timing = Timing(*(statistics.median(x) for x in parts), statistics.median(step), step)
        # each step against the matmul rate measured right after it (robust to a host whose
        # speed changes during the run)
        fraction = statistics.median(
            flops / (t / 1e3) / r for t, r in zip(step, rates[name], strict=True)
        )
        results["implementations"][name] = {
            "timing_ms": asdict(timing),
            "audio_seconds_per_second": audio / (timing.step / 1e3),
            "fraction_of_matmul_rate": fraction,
            "mfu": flops / (timing.step / 1e3) / peak if peak else None,
            "peak_memory_mib": peak_memory(name),
        }
    results["data_path_audio_seconds_per_second"] = data_path(args.manifest, args.seconds, 40)

    print(
        f"{args.preset}, batch {args.batch} x {args.seconds:g} s, {args.precision}, "
        f"{results['device_name']}, {results['threads']} threads, torch {torch.__version__}"
    )
    print(
        f"matrix multiply (2048^3, median between steps): {rate / 1e9:.1f} GFLOP/s "
        f"(range {min(matmul.samples) / 1e9:.0f}-{max(matmul.samples) / 1e9:.0f}); counted "
        f"{flops / audio / 1e9:.1f} GFLOP per audio-second (forward + backward)"
    )
    if compile_seconds is not None:
        print(f"torch.compile + warm-up: {compile_seconds:.1f} s")
    print(
        "| implementation | audio-s/s | ms/step | forward | backward | optimizer | "
        "of matmul rate | MFU | peak MiB |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, r in results["implementations"].items():
        t = r["timing_ms"]
        print(
            f"| {name} | {r['audio_seconds_per_second']:.1f} | {t['step']:.0f} | "
            f"{t['forward']:.0f} | {t['backward']:.0f} | {t['optimizer']:.0f} | "
            f"{r['fraction_of_matmul_rate']:.0%} | "
            f"{'-' if r['mfu'] is None else format(r['mfu'], '.1%')} | "
            f"{r['peak_memory_mib']:.0f} |"
        )
    if "transformers" in results["implementations"]:
        # each of our steps against the transformers step run next to it
        pairs = [
            sum(theirs) / sum(ours)
            for ours, theirs in zip(times["ours"], times["transformers"], strict=True)
        ]
        ratio = statistics.median(pairs)
        results["speedup_over_transformers"] = ratio
        results["speedup_per_step_pair"] = pairs
        print(
            f"ours / transformers (median over step pairs): {ratio:.2f}x "
            f"(pairs {min(pairs):.2f}-{max(pairs):.2f})"
        )
    print(
        f"data path (decode + crop + collate + mask plan), one worker: "
        f"{results['data_path_audio_seconds_per_second']:.0f} audio-s/s"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
