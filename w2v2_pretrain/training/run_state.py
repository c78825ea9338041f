"""What an exact resume needs beyond Lightning's own checkpoint state.

- the random states (torch, CUDA, numpy, Python): captured at a save as plain tensors and
  lists (checkpoints load with ``weights_only=True``) and restored when training starts, after
  everything that set up the run drew its numbers;
- two fixes to the loop progress Lightning saves, for a stop between epochs and a stop inside a
  validation (`forget_finished_epochs_batches`, `redo_interrupted_validation`);
- where the interrupted epoch stands (`data_position`), which the module hands to the data
  module so that the batch sampler skips the batches already trained on.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def rng_states() -> dict[str, Any]:
    """Every random state this process draws from, as plain types and tensors."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": [version, list(internal), gauss_next],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_states(state: dict[str, Any]) -> None:
    """Set every random state `rng_states` captured."""
    torch.set_rng_state(state["torch"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _fit_loop(checkpoint: dict[str, Any]) -> dict[str, Any]:
    return checkpoint.get("loops", {}).get("fit_loop", {})


def forget_finished_epochs_batches(checkpoint: dict[str, Any]) -> None:
    """A checkpoint saved after an epoch ended and before the next began (a SIGTERM there)
    still counts the finished epoch's batches as the current epoch's; Lightning would resume
    the next epoch as if those were done (and the data loader skip them). Zero that count.

    On a restart, Lightning 2.6's ``_TrainingEpochLoop.reset`` zeroes that count only for a
    checkpoint saved at the end of a training batch (``restarted_on_train_batch_end``):
    https://github.com/Lightning-AI/pytorch-lightning/blob/2.6.6/src/lightning/pytorch/loops/training_epoch_loop.py
    """
    loop = _fit_loop(checkpoint)
    epochs, batches = loop.get("epoch_progress"), loop.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return
    if epochs["current"]["started"] == epochs["current"]["completed"]:
        batches["current"] = dict.fromkeys(batches["current"], 0)
        batches["is_last_batch"] = False


def redo_interrupted_validation(checkpoint: dict[str, Any]) -> None:
    """Make Lightning run again, whole, the validation a stop signal interrupted.

    Lightning raises its SIGTERM stop at the end of a validation batch
    (``_EvaluationLoop._evaluation_step``), so the checkpoint's validation progress has every
    started batch completed, and its training progress every batch completed: the state it
    also has when a checkpoint is saved at the end of a whole validation. On restart
    ``_TrainingEpochLoop.advance`` therefore takes the validation as done ("saved on last") and
    skips it; it runs a validation again only when ``restarted_mid_evaluation``, which needs a
    validation batch started and not processed. See ``advance`` and
    ``_EvaluationLoop.update_restart_stage``:
    https://github.com/Lightning-AI/pytorch-lightning/blob/2.6.6/src/lightning/pytorch/loops/training_epoch_loop.py
    So the progress is given that form, with no batch of this validation counted as done: its
    sums are not in the checkpoint, and a validation resumed from the saved progress would run
    only its remaining batches (https://github.com/Lightning-AI/pytorch-lightning/issues/19549).
    The validation then runs from its first batch, at the same update and TensorBoard step,
    and best.ckpt and the run-health checks see it.
    """
    progress = _fit_loop(checkpoint).get("epoch_loop.val_loop.batch_progress")
    if not progress:
        return
    started = max(1, progress["total"]["started"])
    progress["total"] = {"ready": started, "started": started}
    progress["total"] |= {"processed": started - 1, "completed": started - 1}
    progress["current"] = dict.fromkeys(progress["current"], 0)
    progress["is_last_batch"] = False


def data_position(checkpoint: dict[str, Any]) -> tuple[int, int]:
    """``(epoch, batches)``: the epoch the checkpoint stopped in, and how many of its training
    batches were trained on.

    ``processed``, not ``completed``: a checkpoint saved at the end of a batch counts it
    processed, not yet completed, and Lightning resumes with the next batch index
    (``_TrainingEpochLoop`` increments ``processed`` before ``on_train_batch_end``). Read after
    `forget_finished_epochs_batches`, so a stop between epochs skips nothing of the next.
    """
    loop = _fit_loop(checkpoint)
    epoch = int(loop.get("epoch_progress", {}).get("current", {}).get("completed", 0))
    batches = loop.get("epoch_loop.batch_progress", {}).get("current", {}).get("processed", 0)
    return epoch, int(batches)
