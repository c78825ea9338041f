"""The wheels the GPU machine lacks, for Python 3.12 on manylinux x86_64, into one folder.

The lent GPU machine has no network and its own Python (3.12, torch 2.11 with CUDA, Lightning,
torchaudio, transformers, tensorboard, ...; DEVICE_HAS below). This walks the project's
requirements (pyproject.toml's dependencies and the test extras) and, for every package the
machine does not hold, downloads the wheel of the version installed here (the tested one),
follows that wheel's own requirements, and builds a wheel from the source archive where PyPI
has only that (antlr4-python3-runtime, intervaltree: pure Python). It then checks that the
versions the machine holds fit pyproject.toml's floors and prints what does not.

    python scripts/gpu_wheels.py --dest .whl      # make gpu-wheels

On the machine: ``pip install --no-index --no-deps --target /tmp/site .whl/*.whl`` (what
``scripts/gpu_check.sh`` does), then the project itself with ``--no-deps``.
"""

from __future__ import annotations

import argparse
import email
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import compatible_tags, cpython_tags
from packaging.utils import canonicalize_name, parse_wheel_filename

REPO = Path(__file__).resolve().parents[1]
TARGET = dict(python_version="3.12", python_full_version="3.12.3", implementation_name="cpython")
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_24_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
MACHINE_TAGS = set(cpython_tags((3, 12), platforms=PLATFORMS)) | set(
    compatible_tags((3, 12), "cp312", PLATFORMS)
)
# what the machine's image holds (the device's KINDS.md, read 2026-11-17), and the versions
# its pip list showed (2026-11) for the packages whose floors matter here
DEVICE_HAS = set(
    """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
    botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
    coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
    diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
    frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
    hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
    jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
    lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
    mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx
    ninja numba numba-cuda numpy numpyro nvidia-ml-py onnx onnx-ir onnxruntime onnxscript
    opencv-python-headless optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging
    pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client propcache protobuf
    psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest
    pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
    pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core
    scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
    shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
    tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz
    torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
    treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug
    wheel wrapt xarray xxhash yarl zipp""".split()  # noqa: SIM905
)
DEVICE_VERSIONS = {
    "torch": "2.11.0",
    "torchaudio": "2.11.0",
    "pytorch-lightning": "2.6.6",
    "transformers": "5.17.0",
    "numpy": "2.5.2",
    "safetensors": "0.8.0",
    "torchmetrics": "1.9.0",
}
# the test extras the GPU check uses: lhotse and urllib3 (the test modules' imports) and
# transformers (the export and speed comparisons); ruff is not needed there
EXTRAS = ["lhotse", "urllib3", "transformers"]


@dataclass
class Plan:
    """What the walk found: wheels in the folder, requirements the machine meets, misfits."""

    wheels: dict[str, Path] = field(default_factory=dict)
    on_device: dict[str, list[str]] = field(default_factory=dict)  # name -> specifiers asked
    misfits: list[str] = field(default_factory=list)


def project_requirements() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    named = {
        canonicalize_name(Requirement(r).name): r for r in project["optional-dependencies"]["dev"]
    }
    return [Requirement(r) for r in project["dependencies"]] + [
        Requirement(named[canonicalize_name(n)]) for n in EXTRAS
    ]


def applies(req: Requirement) -> bool:
    """Whether ``req`` holds on the machine (Python 3.12 on Linux, no extra asked for)."""
    if req.marker is None:
        return True
    env = {**default_environment(), **TARGET, "extra": ""}
    return req.marker.evaluate(env)


def wheel_requirements(wheel: Path) -> list[Requirement]:
    with zipfile.ZipFile(wheel) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        meta = email.message_from_bytes(z.read(name))
    return [Requirement(r) for r in meta.get_all("Requires-Dist") or []]


def pinned(req: Requirement) -> str:
    """``name==version`` of the version installed here when it fits, else the requirement."""
    try:
        here = metadata.version(req.name)
    except metadata.PackageNotFoundError:
        return str(req.name) + str(req.specifier)
    return f"{req.name}=={here}" if req.specifier.contains(here, prereleases=True) else str(req)


def fetch(spec: str, dest: Path) -> Path:
    """The wheel of ``spec`` for the machine in ``dest``: a binary from PyPI, or one built here
    from the source archive when it is pure Python."""
    before = set(dest.glob("*.whl"))
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    download = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "-d", str(dest)]
    binary = [*download, "--only-binary=:all:", "--python-version", "3.12"]
    proc = subprocess.run(
        [*binary, "--implementation", "cp", *platforms, spec], capture_output=True, text=True
    )
    if proc.returncode != 0:  # no binary: build from the sdist, which must be pure Python
        build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(dest)]
        proc = subprocess.run([*build, spec], capture_output=True, text=True)
    new = sorted(set(dest.glob("*.whl")) - before)
    if proc.returncode != 0 or len(new) != 1:
        raise SystemExit(
            f"error: {spec}: no wheel for Python 3.12 manylinux x86_64: {proc.stderr}"
        )
    if not parse_wheel_filename(new[0].name)[3] & MACHINE_TAGS:
        new[0].unlink()
        raise SystemExit(f"error: {new[0].name}: not installable on Python 3.12 manylinux x86_64")
    return new[0]


def walk(dest: Path) -> Plan:
    """Fetch every wheel the machine lacks, following each wheel's own requirements."""
    plan, todo = Plan(), [r for r in project_requirements() if applies(r)]
    present: dict[str, Path] = {}
    for wheel in sorted(dest.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        if name in present:  # pip refuses the whole install then
            raise SystemExit(
                f"error: {dest}: two wheels of {name}: {present[name].name}, {wheel.name}"
            )
        present[name] = wheel
    while todo:
        req = todo.pop(0)
        name = canonicalize_name(req.name)
        if name in DEVICE_HAS:
            plan.on_device.setdefault(name, []).append(str(req.specifier))
            have = DEVICE_VERSIONS.get(name)
            if have and not req.specifier.contains(have, prereleases=True):
                plan.misfits.append(f"{req}: the GPU machine has {name} {have}")
            continue
        if name in plan.wheels:
            continue
        wheel = present.get(name) or fetch(pinned(req), dest)
        plan.wheels[name] = wheel
        version = parse_wheel_filename(wheel.name)[1]
        if not req.specifier.contains(version, prereleases=True):
            plan.misfits.append(f"{req}: the wheel carried is {wheel.name}")
        todo += [r for r in wheel_requirements(wheel) if applies(r)]
    return plan


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dest", type=Path, default=REPO / ".whl")
    args = p.parse_args()
    args.dest.mkdir(parents=True, exist_ok=True)
    plan = walk(args.dest)
    size = sum(w.stat().st_size for w in plan.wheels.values())
    print(f"{len(plan.wheels)} wheels in {args.dest} ({size / 2**20:.1f} MiB):")
    for name, wheel in sorted(plan.wheels.items()):
        print(f"  {name}: {wheel.name}")
    print(f"on the GPU machine already: {', '.join(sorted(plan.on_device))}")
    for line in plan.misfits:
        print(f"does not fit: {line}")
    if plan.misfits:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
