"""``w2v2-pretrain [overrides]``: the Hydra entry point; ``train(cfg)`` does the work."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from w2v2_pretrain.errors import W2V2Error, one_line
from w2v2_pretrain.paths import CONFIG_DIR
from w2v2_pretrain.train import TrainResult, register_configs, train


def summary(result: TrainResult) -> str:
    """What the user needs after a run: where everything is and the final validation."""
    m = result.val_metrics
    lines = [
        "",
        f"pretraining finished after {result.global_step} updates",
        f"  run folder:   {result.output_dir}",
        f"  checkpoints:  {result.checkpoint_dir} (last: "
        f"{result.last_checkpoint.name if result.last_checkpoint else '-'}, best: "
        f"{result.best_checkpoint.name if result.best_checkpoint else '-'})",
        f"  config:       {result.output_dir / '.hydra' / 'config.yaml'}",
    ]
    if m:
        lines.append(
            "  validation:   loss {:.3f}  contrastive {:.3f}  accuracy {:.3f}  "
            "code ppl {:.1f}  prob ppl {:.1f}".format(
                m.get("val/loss", float("nan")),
                m.get("val/contrastive", float("nan")),
                m.get("val/accuracy", float("nan")),
                m.get("val/code_perplexity", float("nan")),
                m.get("val/prob_perplexity", float("nan")),
            )
        )
    lines.append(
        f"  TensorBoard:  tensorboard --logdir {result.output_dir}  (or: make tensorboard)"
    )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _main(cfg: DictConfig) -> None:
    try:
        result = train(cfg)
    except W2V2Error as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(summary(result), flush=True)


def main() -> None:
    register_configs()
    _main()


if __name__ == "__main__":
    main()
