"""Memory per GPU of a pretraining step, for each model size, with and without activation
checkpointing (``model.context_network.checkpoint_activations=true``).

What a step keeps on each GPU under the recipe (bf16-mixed, fused AdamW, DDP):
- parameters, float32: 4 bytes each;
- gradients, float32: 4 bytes each, and DDP's gradient buckets, another 4 (a copy unless
  ``gradient_as_bucket_view``);
- AdamW's two moments, float32: 8 bytes each;
- autocast's bf16 copies of the weights, cached for the step: 2 bytes each;
- activations saved for backward, at the recipe's ``max_tokens`` samples per GPU.

The activations are measured, not guessed: a forward pass of the real model on this CPU under
``torch.autocast(bfloat16)`` counts the bytes of every tensor autograd saves for backward
(``torch.autograd.graph.saved_tensors_hooks``, each storage once; weights and their bf16 copies
left out, they are counted above). Attention runs through ``scaled_dot_product_attention``'s
flash kernel (no padding, attention dropout 0, as in the LARGE and XLS-R recipes), which saves
O(T) per head as the GPU's flash kernel does, so the saved bytes grow linearly with the audio.
Each size is measured at full width with 1 and with 2 Transformer blocks on a short clip: the
difference is one block's activations, the rest is the feature encoder, the projections and
the objective; both scale to the recipe's audio per GPU and the model's depth. With activation
checkpointing a block keeps only its input, and one block's activations exist at a time while
it is recomputed in backward.

    python scripts/memory_estimate.py                  # the table of docs/performance.md
    python scripts/memory_estimate.py --gpus 8 --seconds 4
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import torch

from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.models.context_network import TransformerBlock
from w2v2_pretrain.models.masking import draw_masks
from w2v2_pretrain.models.noise import Noise

# samples per GPU-batch of each size's recipe (configs/experiment/*.yaml: max_tokens)
RECIPE_SAMPLES = {
    "base": 1_400_000,
    "large": 1_200_000,
    "xlsr_300m": 1_200_000,
    "xlsr_1b": 1_200_000,
    "xlsr_2b": 1_200_000,
}
GIB = 2**30


@dataclass
class Saved:
    """Bytes autograd saved for backward in one forward pass."""

    total: int
    block_inputs: int
    """Bytes of the Transformer blocks' inputs (what checkpointing keeps of a block)."""


def saved_bytes(name: str, num_layers: int, seconds: float) -> Saved:
    """Activations of a bf16-mixed training forward of preset ``name`` cut to ``num_layers``
    blocks, on one ``seconds``-long clip (no padding)."""
    cfg = preset(name)
    cfg.context_network.num_layers = num_layers
    cfg.context_network.layerdrop = 0.0
    torch.manual_seed(0)
    model = Wav2Vec2Model(cfg).train()
    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}
    weight_shapes = {tuple(p.shape) for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in weights and tuple(t.shape) not in weight_shapes:
            seen[ptr] = storage.nbytes()
        return t

    inputs: list[int] = []
    hooks = [
        m.register_forward_pre_hook(lambda _m, args: inputs.append(args[0].nbytes))
        for m in model.modules()
        if isinstance(m, TransformerBlock)
    ]
    samples = round(seconds * cfg.input.sample_rate)
    frames = model.feature_encoder.output_lengths(torch.tensor([samples]))
    plan = draw_masks(cfg, frames, int(frames[0]), Noise(torch.Generator().manual_seed(0)))
    source = torch.randn(1, samples)
    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=torch.bfloat16),
    ):
        model(source, temperature=2.0, plan=plan)  # the loss and all it was computed from
    for h in hooks:
        h.remove()
    return Saved(sum(seen.values()), sum(inputs))


@dataclass
class Estimate:
    """GiB per GPU of one size."""

    name: str
    params: int
    states: float
    """Parameters, gradients, DDP buckets, AdamW moments, bf16 weight copies."""
    activations: float
    activations_checkpointed: float

    @property
    def total(self) -> float:
        return self.states + self.activations

    @property
    def total_checkpointed(self) -> float:
        return self.states + self.activations_checkpointed

    def fsdp(self, gpus: int) -> float:
        """Full sharding over ``gpus``: the float32 states and the bf16 copies divided among
        them (plus one unsharded block, small beside them), activations unchanged,
        checkpointed, no DDP buckets."""
        return self.params * (4 + 4 + 8 + 2) / gpus / GIB + self.activations_checkpointed


def estimate(name: str, seconds: float) -> Estimate:
    cfg = preset(name)
    with torch.device("meta"):
        params = sum(p.numel() for p in Wav2Vec2Model(cfg).parameters())
    one, two = saved_bytes(name, 1, seconds), saved_bytes(name, 2, seconds)
    block = two.total - one.total  # one block's activations on the clip
    block_input = two.block_inputs - one.block_inputs
    rest = one.total - block
    L = cfg.context_network.num_layers
    scale = RECIPE_SAMPLES[name] / (seconds * cfg.input.sample_rate)
    return Estimate(
        name=name,
        params=params,
        states=params * (4 + 4 + 4 + 8 + 2) / GIB,
        activations=(rest + L * block) * scale / GIB,
        activations_checkpointed=(rest + L * block_input + block) * scale / GIB,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=4.0, help="measured clip length")
    parser.add_argument("--gpus", type=int, default=8, help="GPUs sharing the FSDP states")
    parser.add_argument("--gpu-gib", type=float, default=80.0, help="memory of one GPU")
    args = parser.parse_args()
    if args.seconds <= 0.5 or args.gpus < 1:
        parser.error("--seconds must be > 0.5 and --gpus >= 1")
    torch.set_num_threads(1)
    rows = [estimate(name, args.seconds) for name in RECIPE_SAMPLES]
    print(
        f"| size | parameters | samples per GPU | params + grads + DDP buckets + AdamW + bf16 "
        f"copies | activations | total | activations, checkpointed | total, checkpointed | "
        f"FSDP on {args.gpus}, checkpointed |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        fits = "" if r.total_checkpointed <= args.gpu_gib else " (over)"
        print(
            f"| {r.name} | {r.params / 1e6:,.1f}M | {RECIPE_SAMPLES[r.name]:,} | "
            f"{r.states:.1f} | {r.activations:.1f} | {r.total:.1f} | "
            f"{r.activations_checkpointed:.1f} | {r.total_checkpointed:.1f}{fits} | "
            f"{r.fsdp(args.gpus):.1f} |"
        )
    print(f"GiB per GPU; measured on {args.seconds:g}-s clips, scaled to the recipe's samples")


if __name__ == "__main__":
    main()
