"""``w2v2-pretrain [overrides]``: the Hydra entry point; ``train(cfg)`` does the work."""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import sys

import hydra
from hydra.errors import HydraException
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException
from pytorch_lightning.utilities import rank_zero_only

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.configs import register_configs
from w2v2_pretrain.paths import CONFIG_MODULE
from w2v2_pretrain.train import TrainResult, train

# 128 + the signal: the run stopped early (checkpointed), as schedulers and shells expect
EXIT_STATUS = {"SIGTERM": 143, "SIGINT": 130}


def summary(result: TrainResult) -> str:
    """What the user needs after a run: where everything is, the final validation beside
    chance, any run-health warnings, and whether the data held training back."""
    m = result.val_metrics
    by = {"SIGINT": "Ctrl-C (SIGINT)"}.get(result.stopped_by or "", result.stopped_by)
    how = (
        f"stopped by {by} after {result.global_step} updates (checkpointed; "
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
    for line in result.probe_lines:  # the latest probe round, if any ran
        lines.append(f"  probes:       {line}")
    for w in result.warnings:
        lines.append(f"  warning:      {w}")
    for line in result.data_lines:  # loading held training back, padding or cropping wasted
        lines.append(f"  data:         {line}")
    lines.append(
        f"  TensorBoard:  tensorboard --logdir {result.output_dir}  (or: make tensorboard)"
    )
    return "\n".join(lines)


@hydra.main(version_base="1.3", config_path=CONFIG_MODULE, config_name="train")
@friendly_errors
def _main(cfg: DictConfig) -> None:
    global _started
    _started = True
    result = train(cfg)
    if rank_zero_only.rank == 0:
        print(summary(result), flush=True)
    if result.stopped_by:
        sys.exit(EXIT_STATUS[result.stopped_by])


_started = False  # the run began: an OSError after this is the run's, not the run folder's

_KINDS = {"Integer": "an integer", "Float": "a number", "Boolean": "true or false"}


def composition_error(e: HydraException) -> str:
    """One line for a config Hydra could not compose: the dotted key and what is wrong."""
    cause = e.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if not key:  # e.g. an unknown option of a group; Hydra lists the known ones
        text = str(e).split("Config search path", 1)[0]
        return " ".join(line.strip() for line in text.splitlines() if line.strip())
    msg = str(getattr(cause, "msg", cause)).strip().splitlines()[0]
    if m := re.match(r"Value '(.*)' of type '\w+' could not be converted to (\w+)", msg):
        return f"{key}: expected {_KINDS.get(m[2], m[2])}, got {m[1]!r}"
    if m := re.match(r"Invalid value '(.*)', expected one of \[(.*)\]", msg):
        names = ", ".join(repr(name.strip()) for name in m[2].split(","))
        return f"{key}: expected one of {names}, got {m[1]!r}"  # as Choice.parse says it
    if re.match(r"Key '.*' (is )?not in", msg):
        schema = getattr(cause, "object_type", None)
        if schema is None or not dataclasses.is_dataclass(schema):
            return f"{key}: not in the config (add a new key with +{key}=...)"
        known = [f.name for f in dataclasses.fields(schema)]
        near = difflib.get_close_matches(key.rsplit(".", 1)[-1], known, n=1)
        hint = (
            f"did you mean {key.rsplit('.', 1)[0]}.{near[0]}?"
            if near
            else "known: " + ", ".join(known)
        )
        return f"{key}: no such setting; {hint}"
    return f"{key}: {msg}"


def main() -> None:
    register_configs()
    # Hydra prints a composition error over several lines and exits 1; we report it as every
    # other bad setting is (one line, exit 2), unless the user asked Hydra for the full error
    asked = os.environ.get("HYDRA_FULL_ERROR")
    full_error = asked == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        _main()
    except HydraException as e:
        if full_error:
            raise
        print(f"error: {composition_error(e)}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if _started or full_error:
            raise
        # Hydra creates the run folder and its .hydra/ before the run starts
        print(f"error: hydra.run.dir: cannot write the run folder: {e}", file=sys.stderr)
        sys.exit(2)
    finally:  # as the user set it (main() may run again in one process)
        if asked is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = asked


if __name__ == "__main__":
    main()
