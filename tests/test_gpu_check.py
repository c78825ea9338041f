"""The GPU check (scripts/gpu_check.sh): its CPU dry run end to end, the tests it selects,
the wheels it carries to the GPU machine, the peaks its MFU divides by and the CPU curve it
compares with."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from w2v2_pretrain.hardware import peak_flops
from w2v2_pretrain.paths import REPO_ROOT


def script(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def check(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHON=sys.executable)
    cmd = ["bash", str(REPO_ROOT / "scripts" / "gpu_check.sh"), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)


CUDA_TESTS = {
    "tests/test_fsdp.py::test_fsdp_run_through_the_cli",
    "tests/test_sync_free.py::test_cuda_forward_and_backward_under_sync_debug_mode_error",
    "tests/test_sync_free.py::test_cuda_forward_and_backward_equal_the_cpu_ones",
}


def test_the_cuda_mark_selects_the_gpu_tests_and_they_skip_here():
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-v", "-p", "no:cacheprovider", "tests"]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-2000:]
    ran = dict(re.findall(r"^(tests/\S+::\S+) (\w+)", proc.stdout, re.MULTILINE))
    assert ran == dict.fromkeys(CUDA_TESTS, "SKIPPED")
    assert "needs a CUDA GPU" in proc.stdout


@pytest.mark.slow  # ~2.5 min: every step, compile included (the steps' parts have their tests)
def test_the_dry_run_runs_every_step_and_writes_every_field(tmp_path):
    proc = check("--dry-run", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    steps = report["steps"]
    assert report["dry_run"] and list(steps) == list(script("gpu_check").STEPS)
    for name, section in steps.items():
        assert section["status"] == "ok" and section["errors"] == [], (name, section["errors"])
        assert section["missing_fields"] == [], name
    assert steps["environment"]["floors_fit"] and steps["environment"]["cuda_available"] is False
    tests = steps["cuda_tests"]
    assert tests["selected"] == tests["skipped"] == len(CUDA_TESTS)
    run = steps["pretrain"]
    assert run["sigterm_exit"] == 143 and run["sigterm_seconds"] < 30
    assert 2 <= run["sigterm_update"] < 6 and run["final_update"] == 6
    assert run["outputs_equal"] and run["export_max_relative_error"] < 1e-5
    speed = steps["speed"]
    assert set(speed["runs"]) == {"paper_budget", "compile", "checkpoint_activations"}
    assert speed["runs"]["paper_budget"]["speedup_over_transformers"] > 0
    assert speed["runs"]["compile"]["compile_seconds"] > 0
    assert all(r["audio_seconds_per_second"] > 0 for r in speed["runs"].values())
    assert speed["runs"]["paper_budget"]["mfu"] is None  # no peak for a CPU
    assert speed["largest_budget"]["samples_per_update"] == 2 * 64_000  # capped at 2x here
    assert 0 <= speed["pipeline"]["data_wait_fraction"] <= 1
    learning = steps["learning"]["runs"]
    assert set(learning) == {"bf16", "fp32"}
    assert all(r["val_contrastive"] and r["updates"] == 4 for r in learning.values())
    log = (tmp_path / "gpu_check.log").read_text()
    assert all(f"==== {name}" in log for name in steps)


def test_a_failed_step_does_not_stop_the_next_and_a_cpu_is_no_gpu(tmp_path):
    """Without --dry-run on this CPU: the environment finds no CUDA, the CUDA tests all skip;
    both are reported as failed, the second ran although the first failed, and the exit is 1."""
    cmd = [sys.executable, str(REPO_ROOT / "scripts" / "gpu_check.py"), "--out", str(tmp_path)]
    proc = subprocess.run(
        [*cmd, "--only", "environment,cuda_tests"], capture_output=True, text=True
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    steps = json.loads((tmp_path / "gpu_check.json").read_text())["steps"]
    assert steps["environment"]["status"] == "failed"
    assert steps["environment"]["errors"] == ["torch sees no CUDA device"]
    assert steps["cuda_tests"]["status"] == "failed"
    assert steps["cuda_tests"]["errors"] == ["3 CUDA tests skipped on the GPU"]
    assert "NOT every step ok" in proc.stdout


def test_an_unknown_step_is_one_line(tmp_path):
    proc = check("--dry-run", "--out", str(tmp_path), "--only", "environment,speeed")
    steps = "environment, cuda_tests, pretrain, speed, learning"
    assert proc.returncode == 2
    last = proc.stderr.strip().splitlines()[-1]
    assert last.endswith(f"error: --only: no step speeed (the steps: {steps})")


def test_the_published_curve_is_the_one_in_docs_demo():
    row = next(
        line
        for line in (REPO_ROOT / "docs" / "demo.md").read_text().splitlines()
        if line.startswith("| 1 (default) |")
    )
    losses = [float(v) for v in re.findall(r"(\d\.\d{3}) \([+-]\d\.\d\d\)", row)]
    assert (
        dict(zip(range(99, 600, 100), losses, strict=True))
        == script("gpu_check").PUBLISHED_DEMO_CURVE
    )


def test_peaks_by_device_name_and_precision():
    assert peak_flops("NVIDIA H200", "bf16-mixed") == 989.4e12
    assert peak_flops("NVIDIA H200 NVL", "bf16") == 835.5e12
    assert peak_flops("NVIDIA H100 80GB HBM3", "32") == 66.9e12
    assert peak_flops("NVIDIA H100 PCIe", "bf16") == 756.5e12
    assert peak_flops("NVIDIA A100-SXM4-80GB", "fp32") == 19.5e12
    assert peak_flops("NVIDIA L40S", "bf16") == 362.1e12  # not the L4's
    assert peak_flops("NVIDIA L4", "bf16") == 121.0e12
    assert peak_flops("cpu", "bf16") is None and peak_flops("Tesla T4", "32") is None
    assert peak_flops("NVIDIA H200", "16-mixed") is None


def test_the_machines_versions_are_held_against_the_floors(monkeypatch, tmp_path):
    """The floors of what the GPU machine already has: today's fit; an older torch there
    would be named."""
    wheels = script("gpu_wheels")
    on_device = [r for r in wheels.project_requirements() if wheels.canonicalize_name(r.name)
                 in wheels.DEVICE_HAS]  # fmt: skip
    monkeypatch.setattr(wheels, "project_requirements", lambda: on_device)
    plan = wheels.walk(tmp_path)
    assert plan.misfits == [] and {"torch", "pytorch-lightning", "transformers"} <= set(
        plan.on_device
    )
    monkeypatch.setitem(wheels.DEVICE_VERSIONS, "torch", "2.5.1")
    assert wheels.walk(tmp_path).misfits == ["torch>=2.6: the GPU machine has torch 2.5.1"]


@pytest.mark.slow  # downloads from PyPI (~6 MiB) and builds two pure-Python wheels
def test_the_carried_wheels_install_everything_the_machine_lacks(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "scripts" / "gpu_wheels.py"), "--dest", str(tmp_path)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheels = script("gpu_wheels")
    found = {canonicalize_name(parse_wheel_filename(w.name)[0]): w for w in tmp_path.glob("*.whl")}
    assert {"hydra-core", "omegaconf", "antlr4-python3-runtime", "soundfile", "lhotse"} <= set(
        found
    )
    assert len(found) == len(list(tmp_path.glob("*.whl")))  # one version of each
    for name, wheel in found.items():
        assert parse_wheel_filename(wheel.name)[3] & wheels.MACHINE_TAGS, wheel.name
        with zipfile.ZipFile(wheel) as z:
            meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA")))
        needs = [
            Requirement(line.split(":", 1)[1].strip())
            for line in meta.decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
        for req in needs:
            if wheels.applies(req):
                dep = canonicalize_name(req.name)
                assert dep in found or dep in wheels.DEVICE_HAS, f"{name} needs {req}"
