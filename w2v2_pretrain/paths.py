"""Where the package's configs and, in a source checkout, the demo corpus are."""

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_DIR = PACKAGE_DIR / "configs"  # shipped in the package: a wheel finds them anywhere
CONFIG_MODULE = "pkg://w2v2_pretrain.configs"
REPO_ROOT = PACKAGE_DIR.parent  # a source checkout's root (data/ holds the demo corpus)
