"""The Hydra configs (this folder is installed as the package ``w2v2_pretrain.configs``).

`register_configs` adds the typed nodes the YAML files are composed onto: the root schema of
``train.yaml``, the ``data`` schema, the model presets (``model=tiny|base|large|xlsr_300m|
xlsr_1b|xlsr_2b``, the Python presets of models/presets.py being the single source of truth)
and the run-health thresholds.
"""

from __future__ import annotations

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf

from w2v2_pretrain.data.config import DataConfig
from w2v2_pretrain.models.presets import PRESETS
from w2v2_pretrain.paths import REPO_ROOT
from w2v2_pretrain.training.config import RunConfig
from w2v2_pretrain.training.health import HealthConfig


def register_configs() -> None:
    """Store the typed nodes in Hydra's ConfigStore (idempotent; call before composing)."""
    OmegaConf.register_new_resolver("w2v2_root", lambda: str(REPO_ROOT), replace=True)
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="data", name="schema", node=DataConfig)
    for name, make in PRESETS.items():
        cs.store(group="model", name=name, node=make())
    cs.store(group="health", name="default", node=HealthConfig())
