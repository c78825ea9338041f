"""Where the Hydra configs and, in a source checkout, the demo corpus are."""

from importlib.util import find_spec
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
# the top-level configs/ folder, installed as the package w2v2_pretrain.configs (pyproject.toml)
CONFIG_DIR = Path(find_spec("w2v2_pretrain.configs").submodule_search_locations[0]).resolve()
CONFIG_MODULE = "pkg://w2v2_pretrain.configs"
REPO_ROOT = PACKAGE_DIR.parent  # a source checkout's root (data/ holds the demo corpus)
