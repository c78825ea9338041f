"""Train our model and transformers' Wav2Vec2ForPreTraining side by side, identically.

Same initial weights (our export), the same demo batches, masks and distractors (drawn by our
collator), the same Gumbel noise (transformers draws its own inside the quantizer: here its
``gumbel_softmax`` gets our draws), AdamW with the same settings and schedule, no dropout, no
feature penalty and feature_grad_mult 1 (transformers has neither). Both compute the same
function, so if one collapses and the other does not, the difference is a bug; if both do,
it is the objective's dynamics.

    python scripts/compare_training.py --mode layer_norm --normalize --seeds 0 1 2 \\
        --steps 60 --plot docs/images/layer_norm_normalized_vs_transformers.png --json curves.json
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
import torch.nn.functional as F

from w2v2_pretrain.data.collate import MaskSeeds
from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.data.datamodule import AudioDataModule
from w2v2_pretrain.interop.hf import to_hf_model
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.models.noise import Noise
from w2v2_pretrain.paths import REPO_ROOT


class Given(Noise):
    """Noise that returns a tensor drawn beforehand (the Gumbel uniforms at masked frames)."""

    def __init__(self, values: torch.Tensor) -> None:
        super().__init__(None)
        self.values = values

    def rand(self, shape, device="cpu") -> torch.Tensor:
        assert tuple(shape) == tuple(self.values.shape), (shape, self.values.shape)
        return self.values.to(device)


def hf_negatives(mask: torch.Tensor, indices: torch.Tensor, within: torch.Tensor) -> torch.Tensor:
    """Our row-local distractor indices (B, M, K) as transformers' (B, T, K) flat frame
    indices into the B * T frames."""
    B, T = mask.shape
    K = within.shape[-1]
    flat = indices + torch.arange(B)[:, None] * T  # (B, M) frame of each masked frame
    out = torch.zeros(B, T, K, dtype=torch.long)
    rows = torch.arange(B)[:, None, None]
    out[rows, indices[..., None], torch.arange(K)] = flat[rows, within]
    return out


def run(seed: int, steps: int, mode: str, normalize: bool, lr: float, warmup: int) -> dict:
    cfg = preset("tiny")
    cfg.feature_encoder.mode = mode
    cfg.feature_encoder.feature_grad_mult = 1.0
    cfg.input.normalize = normalize
    cfg.masking.mask_prob, cfg.masking.mask_length = 0.5, 3
    cfg.objective.num_negatives = 20
    cfg.objective.feature_penalty_weight = 0.0
    cfg.dropout_input = cfg.dropout_features = 0.0
    cfg.context_network.dropout = cfg.context_network.attention_dropout = 0.0
    torch.manual_seed(seed)
    ours = Wav2Vec2Model(cfg).train()
    theirs = to_hf_model(ours).train()
    settings = DataConfig(
        manifest_dir=str(REPO_ROOT / "data" / "manifests"),
        normalize=normalize,
        min_sample_size=16_000,
        max_sample_size=40_000,
        max_tokens=320_000,
        num_workers=0,
        seed=seed,
    )
    data = AudioDataModule(settings, model=cfg, seeds=MaskSeeds(train=seed, val=0))
    data.setup("fit")

    def optimizer(model):
        opt = torch.optim.AdamW(
            model.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6, weight_decay=0.01
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warmup))
        return opt, schedule

    (opt_a, sched_a), (opt_b, sched_b) = optimizer(ours), optimizer(theirs)
    G, V = cfg.quantizer.num_groups, cfg.quantizer.num_vars
    gen = torch.Generator().manual_seed(10_000 + seed)
    gumbels: dict[str, torch.Tensor] = {}
    original = F.gumbel_softmax

    # the signature of F.gumbel_softmax, which it stands in for (always hard, no eps needed)
    def same_noise_gumbel_softmax(logits, tau=1.0, hard=False, eps=1e-10, dim=-1):  # noqa: ARG001
        y_soft = ((logits + gumbels["all"]) / tau).softmax(dim)  # torch's, with our draws
        index = y_soft.max(dim, keepdim=True)[1]
        y_hard = torch.zeros_like(logits).scatter_(dim, index, 1.0)
        return y_hard - y_soft.detach() + y_soft

    curves: dict[str, list[float]] = {
        k: [] for k in ("ours_loss", "hf_loss", "ours_prob_ppl", "hf_prob_ppl", "ours_acc")
    }
    batches = iter(data.train_dataloader())
    for step in range(steps):
        try:
            batch = next(batches)
        except StopIteration:
            batches = iter(data.train_dataloader())
            batch = next(batches)
        plan = batch.plan
        B, T = plan.mask.shape
        temperature = cfg.quantizer.temperature_at(step)
        u = torch.rand(B, T, G, V, generator=gen)
        at_masked = u.gather(1, plan.indices[..., None, None].expand(-1, -1, G, V))
        tiny = torch.finfo(torch.float32).tiny
        gumbels["all"] = -torch.log(-torch.log(u.clamp(min=tiny, max=1 - 1e-7))).view(-1, V)

        out = ours(batch.source, temperature=temperature, plan=plan, noise=Given(at_masked))
        M = out.loss.num_masked.float()
        loss_a = out.loss.total / M
        theirs.set_gumbel_temperature(temperature)
        F.gumbel_softmax = same_noise_gumbel_softmax
        try:
            hf = theirs(
                batch.source,
                mask_time_indices=plan.mask,
                sampled_negative_indices=hf_negatives(plan.mask, plan.indices, plan.distractors),
            )
        finally:
            F.gumbel_softmax = original
        loss_b = hf.loss / M
        for opt, sched, loss in ((opt_a, sched_a, loss_a), (opt_b, sched_b, loss_b)):
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
        curves["ours_loss"].append(float(loss_a.detach()))
        curves["hf_loss"].append(float(loss_b.detach()))
        curves["ours_prob_ppl"].append(float(out.loss.prob_perplexity))
        curves["hf_prob_ppl"].append(float(hf.codevector_perplexity))
        curves["ours_acc"].append(float(out.loss.accuracy))
    return curves


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mode", default="layer_norm", choices=["layer_norm", "group_norm"])
    p.add_argument("--normalize", action="store_true", help="normalized input (LARGE)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=60)
    p.add_argument("--plot", type=Path, default=None, help="PNG of the curves")
    p.add_argument("--json", type=Path, default=None, help="the curves, for the record")
    args = p.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    results = {}
    for seed in args.seeds:
        curves = run(seed, args.steps, args.mode, args.normalize, args.lr, args.warmup)
        results[seed] = curves
        collapsed = {
            who: next((s for s, v in enumerate(curves[f"{who}_prob_ppl"]) if v < 4.0), None)
            for who in ("ours", "hf")
        }
        print(f"seed {seed}: first update with softmax perplexity < 4 (of 128): {collapsed}")
        print("  update: loss ours / transformers | prob ppl ours / transformers | acc ours")
        for s in range(0, args.steps, 10):
            print(
                f"  {s:4d}: {curves['ours_loss'][s]:.3f} / {curves['hf_loss'][s]:.3f} | "
                f"{curves['ours_prob_ppl'][s]:6.1f} / {curves['hf_prob_ppl'][s]:6.1f} | "
                f"{curves['ours_acc'][s]:.2f}"
            )
        first = abs(curves["ours_loss"][0] - curves["hf_loss"][0]) / curves["hf_loss"][0]
        print(f"  first update: losses differ by {first:.1e} (relative)")
    if args.json:
        args.json.write_text(json.dumps(results))
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
        for i, (seed, c) in enumerate(results.items()):
            color = f"C{i}"
            for who, style in (("ours", "-"), ("hf", "--")):
                label = f"{'ours' if who == 'ours' else 'transformers'}, seed {seed}"
                axes[0].plot(c[f"{who}_loss"], style, color=color, label=label)
                axes[1].plot(c[f"{who}_prob_ppl"], style, color=color, label=label)
        axes[0].axhline(math.log(21), color="grey", lw=0.8, label="chance ln(21)")
        axes[0].set(xlabel="update", ylabel="loss per masked frame (nats)")
        axes[1].set(xlabel="update", ylabel="softmax perplexity (of 2 x 64)", yscale="log")
        axes[0].legend(fontsize=7)
        what = f"{args.mode} encoder{', normalized input' if args.normalize else ''}"
        fig.suptitle(f"ours (solid) vs transformers (dashed), identical inputs: {what}")
        fig.tight_layout()
        args.plot.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
