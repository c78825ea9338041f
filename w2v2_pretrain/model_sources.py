"""A model from any of the forms it is saved in.

- a ``w2v2-pretrain`` training checkpoint (``*.ckpt`` written by Lightning);
- a model state file written by `w2v2_pretrain.model_files.save_model` (config + weights);
- a fairseq wav2vec 2.0 pretraining checkpoint (``wav2vec_small.pt``-style);
- a transformers directory (``config.json`` + weights) of a ``Wav2Vec2ForPreTraining``.

`read_model_source` tells the forms apart and hands each to its reader
(`w2v2_pretrain.model_files.read_ours`, `w2v2_pretrain.interop` for the others). Files load with
``torch.load(weights_only=True)`` (`w2v2_pretrain.model_files.load_file`): nothing in a file can
run code.
"""

from __future__ import annotations

from pathlib import Path

from w2v2_pretrain.errors import DataError
from w2v2_pretrain.interop.fairseq import from_fairseq, is_fairseq_checkpoint
from w2v2_pretrain.interop.hf import read_hf
from w2v2_pretrain.model_files import ModelSource, check_weights_fit, load_file, read_ours
from w2v2_pretrain.models import Wav2Vec2Model


def read_model_source(path: str | Path) -> ModelSource:
    """Config and weights from any supported form (checked to fit each other)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise DataError(f"{path}: directory without config.json (not a transformers model)")
        return read_hf(path)
    obj = load_file(path)
    if is_fairseq_checkpoint(obj):
        return from_fairseq(obj, str(path))
    cfg, state, _ = read_ours(path, obj)
    check_weights_fit(cfg, state, str(path))
    steps = obj.get("global_step")
    return ModelSource(
        "w2v2-pretrain", cfg, state, None, int(steps) if steps is not None else None
    )


def load_model(path: str | Path) -> Wav2Vec2Model:
    """A `Wav2Vec2Model` in eval mode from a checkpoint, model state file, fairseq checkpoint
    or transformers directory."""
    return read_model_source(path).model().eval()
