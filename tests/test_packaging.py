"""A built wheel works anywhere, and so does the editable install: the top-level configs/
folder is the package ``w2v2_pretrain.configs`` in both."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

import pytest
import setuptools
import tomllib
from helpers import small_manifests

from w2v2_pretrain.paths import CONFIG_DIR, REPO_ROOT


def test_every_subpackage_is_packaged():
    """pyproject.toml lists the packages (configs/ is mapped into the package): none is left
    out of a wheel."""
    listed = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = setuptools.find_packages(str(REPO_ROOT), include=["w2v2_pretrain*"])
    assert set(found) | {"w2v2_pretrain.configs"} == set(listed["packages"])
    assert listed["package-dir"] == {"w2v2_pretrain.configs": "configs"}


def test_editable_install_finds_the_top_level_configs(tmp_path):
    """The checkout's editable install, run from an unrelated folder, composes from configs/."""
    assert CONFIG_DIR == REPO_ROOT / "configs"
    bin_dir = os.path.dirname(sys.executable)
    proc = subprocess.run(
        [os.path.join(bin_dir, "w2v2-pretrain"), "experiment=demo", "--cfg", "job"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "max_sample_size: 40000" in proc.stdout  # configs/data/demo.yaml
    import w2v2_pretrain.configs

    assert os.path.dirname(w2v2_pretrain.configs.__file__) == str(REPO_ROOT / "configs")


@pytest.mark.slow  # builds a wheel (the two tests above cover the layout in the default run)
def test_wheel_installed_elsewhere_runs_pretraining(tmp_path):
    """Build the wheel, install it with --no-deps into a bare environment that sees the
    dependencies but not this checkout, and run the installed w2v2-pretrain from an unrelated
    working directory: it finds its configs and trains; a user config folder joins them."""
    dist = tmp_path / "dist"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            str(REPO_ROOT),
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(dist),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    (wheel,) = dist.glob("w2v2_pretrain-*.whl")
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env_dir)], check=True)
    site = next((env_dir / "lib").glob("python3*/site-packages"))
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(site),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    # the dependencies, without this checkout's editable install (its .pth is not processed)
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    python = env_dir / "bin" / "python"
    where = subprocess.run(
        [python, "-c", "import w2v2_pretrain; print(w2v2_pretrain.__file__)"],
        capture_output=True,
        text=True,
        check=True,
        cwd=tmp_path,
    ).stdout
    assert where.startswith(str(site)), where

    mine = tmp_path / "my_configs" / "experiment"
    mine.mkdir(parents=True)
    (mine / "mine.yaml").write_text(
        "# @package _global_\ndefaults:\n  - demo\ntrainer:\n  max_steps: 2\n"
    )
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    proc = subprocess.run(
        [
            python,
            site / "bin" / "w2v2-pretrain",
            f"--config-dir={tmp_path / 'my_configs'}",  # Hydra's options come first
            "experiment=mine",
            f"data.manifest_dir={small_manifests(tmp_path, 4)}",
            "data.num_workers=0",
            "data.persistent_workers=false",
            "trainer.limit_val_batches=1",
            "hydra.run.dir=run",
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pretraining finished after 2 updates" in proc.stdout
    assert (workdir / "run" / "checkpoints" / "last.ckpt").is_file()
