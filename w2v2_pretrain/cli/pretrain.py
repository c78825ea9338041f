"""``w2v2-pretrain [overrides]``: the Hydra entry point; ``train(cfg)`` does the work."""

from __future__ import annotations

import math
import sys

import hydra
from omegaconf import DictConfig

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.paths import CONFIG_MODULE
from w2v2_pretrain.train import TrainResult, register_configs, train

EXIT_SIGTERM = 143  # 128 + SIGTERM: the run stopped early (checkpointed), as schedulers expect


def summary(result: TrainResult) -> str:
    """What the user needs after a run: where everything is, the final validation beside
    chance, and any run-health warnings."""
    m = result.val_metrics
    how = (
        f"stopped by {result.stopped_by} after {result.global_step} updates (checkpointed; "
        "continue with resume=true and the same hydra.run.dir)"
        if result.stopped_by
        else f"finished after {result.global_step} updates"
    )
    lines = [
        "",
        f"pretraining {how}",
        f"  run folder:   {result.output_dir}",
        f"  checkpoints:  {result.checkpoint_dir} (last: "
        f"{result.last_checkpoint.name if result.last_checkpoint else '-'}, best: "
        f"{result.best_checkpoint.name if result.best_checkpoint else '-'})",
        f"  config:       {result.output_dir / '.hydra' / 'config.yaml'}",
    ]
    if m:
        contrastive = m.get("val/contrastive", float("nan"))
        lines.append(
            "  validation:   loss {:.3f}  contrastive {:.3f}  accuracy {:.3f}  "
            "code ppl {:.1f}  prob ppl {:.1f}".format(
                m.get("val/loss", float("nan")),
                contrastive,
                m.get("val/accuracy", float("nan")),
                m.get("val/code_perplexity", float("nan")),
                m.get("val/prob_perplexity", float("nan")),
            )
        )
        lines.append(
            f"  chance:       contrastive {result.chance:.3f} nats = ln(K+1); this run "
            f"{result.chance - contrastive:+.3f} below it. In bits, as fairseq logs: "
            f"{contrastive / math.log(2):.3f} (chance {result.chance / math.log(2):.3f})"
        )
    for line in getattr(result, "probe_lines", []):  # the latest probe round, if any ran
        lines.append(f"  probes:       {line}")
    for w in result.warnings:
        lines.append(f"  warning:      {w}")
    lines.append(
        f"  TensorBoard:  tensorboard --logdir {result.output_dir}  (or: make tensorboard)"
    )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="train")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    result = train(cfg)
    from pytorch_lightning.utilities import rank_zero_only

    if rank_zero_only.rank == 0:
        print(summary(result), flush=True)
    if result.stopped_by == "SIGTERM":
        sys.exit(EXIT_SIGTERM)


def main() -> None:
    register_configs()
    _main()


if __name__ == "__main__":
    main()
