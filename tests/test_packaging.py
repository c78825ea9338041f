"""A built wheel works anywhere: configs travel inside the package."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig

from test_training import small_manifests

from w2v2_pretrain.paths import REPO_ROOT


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
