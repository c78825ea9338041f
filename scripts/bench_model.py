"""Share of mask and distractor sampling in one CPU training step of the BASE model.

Times (a) span masking + distractor sampling and (b) a full forward + backward + AdamW step of
BASE on the same batch, and prints (a) as a percentage of (b). Goal: at most 3%.

    python scripts/bench_model.py [--batch 2] [--seconds 15.6] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time

import torch

from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.models.masking import compute_span_mask
from w2v2_pretrain.models.objective import sample_distractors


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="base")
    p.add_argument("--batch", type=int, default=2)
    p.add_argument("--seconds", type=float, default=15.6, help="clip length (BASE crop 250k)")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    torch.manual_seed(0)
    cfg = preset(args.preset)
    model = Wav2Vec2Model(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    samples = int(args.seconds * 16_000)
    source = torch.randn(args.batch, samples)
    lengths = torch.full((args.batch,), samples)
    frames = model.feature_encoder.output_lengths(lengths)
    T = int(frames.max())
    mk, K = cfg.masking, cfg.objective.num_negatives

    def sampling():
        mask = compute_span_mask(frames, T, mk.mask_prob, mk.mask_length, mk.min_masks)
        sample_distractors(args.batch, int(mask.sum(1)[0]), K)

    def step():
        opt.zero_grad()
        out = model(source, lengths, temperature=2.0)
        (out.loss.total / out.loss.num_masked).backward()
        opt.step()

    t_sampling = timed(sampling, 50 * args.repeats)
    t_step = timed(step, args.repeats)
    print(
        f"{args.preset}: batch {args.batch} x {args.seconds:.1f} s ({T} frames), K={K}, "
        f"{torch.get_num_threads()} threads"
    )
    print(f"mask + distractor sampling: {t_sampling * 1e3:.2f} ms")
    print(f"training step (fwd + bwd + AdamW): {t_step * 1e3:.0f} ms")
    print(f"sampling share of the step: {100 * t_sampling / t_step:.2f}%")


if __name__ == "__main__":
    main()
