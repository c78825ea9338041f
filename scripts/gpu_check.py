"""Every GPU fact in one bounded call: a section per step in OUT/gpu_check.json, a log beside.

    bash scripts/gpu_check.sh [--dry-run] [--out DIR] [--work DIR] [--only STEP,...]

(the shell entry installs the carried wheels and the project on the GPU machine first; this is
what it runs). Steps, each in a process of its own under a time bound, the next one run
whatever the last one did:

1. ``environment``: GPU name and memory, torch/CUDA/cuDNN versions, bf16 support, and whether
   the installed packages fit pyproject.toml's version floors;
2. ``cuda_tests``: the tests marked ``cuda`` (``pytest -m cuda``: the sync-free step under
   ``torch.cuda.set_sync_debug_mode("error")``, ``trainer=fsdp`` through the CLI, ...);
3. ``pretrain``: ``w2v2-pretrain`` with the GPU trainer (bf16): SIGTERM to the process group
   after a periodic checkpoint, ``resume=true`` to the end, ``w2v2-export``, and the export's
   outputs against ours on the GPU;
4. ``speed``: scripts/benchmark.py on BASE in bf16 at the paper's 1.4M samples per GPU (7 x
   12.5 s; transformers' Wav2Vec2ForPreTraining on the identical work), with ``--compile`` and
   with activation checkpointing, at the largest budget that fits, and the whole pipeline (a
   real run on the demo corpus: data wait, audio-seconds per second, peak memory);
5. ``learning``: the demo's first 300 updates (of its 600-update schedule) in bf16 and in fp32,
   their validation curves against the CPU demo's published one (docs/demo.md).

``--dry-run`` runs every step on the CPU at tiny scale (tiny preset, a few updates, fp32; the
transformers comparison included) so the script cannot rot between GPU draws. The exit status
is 0 when every step is ``ok`` and every section has its fields (docs/gpu.md lists them).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# step -> (seconds on the GPU, seconds in the dry run on 2 CPU cores); 520 s in all on the GPU
STEPS = {
    "environment": (15, 60),
    "cuda_tests": (100, 240),
    "pretrain": (90, 300),
    "speed": (200, 600),
    "learning": (115, 300),
}
# every section's fields beside status, seconds and errors (None where a value does not apply)
FIELDS = {
    "environment": (
        "python",
        "torch",
        "cuda",
        "cudnn",
        "cuda_available",
        "gpu_name",
        "gpu_count",
        "gpu_memory_gib",
        "compute_capability",
        "bf16_supported",
        "peak_flops_bf16",
        "peak_flops_fp32",
        "packages",
        "floors_fit",
    ),
    "cuda_tests": ("command", "selected", "passed", "failed", "skipped", "failures"),
    "pretrain": (
        "overrides",
        "sigterm_exit",
        "sigterm_seconds",
        "sigterm_update",
        "resume_exit",
        "final_update",
        "export_exit",
        "export_max_relative_error",
        "export_bf16_max_relative_error",
        "outputs_equal",
    ),
    "speed": ("runs", "largest_budget", "pipeline"),
    "learning": ("published_cpu_curve", "runs"),
}
SPEED_FIELDS = (
    "samples_per_update", "audio_seconds_per_second", "ms_per_step", "mfu",
    "fraction_of_matmul_rate", "peak_memory_mib", "flops_per_audio_second", "compile_seconds",
    "transformers_audio_seconds_per_second", "speedup_over_transformers",
)  # fmt: skip
PIPELINE_FIELDS = (
    "updates", "audio_seconds_per_second", "data_wait_fraction", "padding_fraction",
    "peak_memory_mib",
)  # fmt: skip
LEARNING_FIELDS = ("precision", "updates", "seconds", "val_contrastive", "val_accuracy",
                   "below_chance", "against_cpu")  # fmt: skip
# docs/demo.md, "The demo as it ships", seed 1: val contrastive at these updates on 2 CPU cores
PUBLISHED_DEMO_CURVE = {99: 3.044, 199: 3.050, 299: 2.377, 399: 2.007, 499: 1.891, 599: 1.782}
SIGTERM_BOUND_S = 30  # SLURM's and Kubernetes' default grace before SIGKILL


class Section(dict):
    """One step's results, written to disk after each measurement (a step killed at its bound
    keeps what it had), with the step's deadline and where its runs go."""

    def __init__(self, name: str, work: Path, deadline: float, dry: bool) -> None:
        super().__init__(status="ok", errors=[])
        self.name, self.work, self.deadline, self.dry = name, work, deadline, dry
        self.path = work / "sections" / f"{name}.json"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.save()

    def save(self) -> None:
        self.path.write_text(json.dumps(self, indent=2, default=str))

    def fail(self, error: str) -> None:
        self["status"] = "failed"
        self["errors"].append(error)
        print(f"[{self.name}] {error}", flush=True)
        self.save()

    def check(self, ok: bool, error: str) -> bool:
        if not ok:
            self.fail(error)
        return ok

    def left(self) -> float:
        return self.deadline - time.time()

    def run(self, label: str, cmd: list[str], share: float = 1.0):
        """``cmd`` with this step's output, bounded by ``share`` of the time left: the
        completed process, or None (a failure recorded) when it ran out of time."""
        bound = max(1.0, self.left() * share - 2)
        print(f"[{self.name}] {label}: {' '.join(cmd)}", flush=True)
        try:
            return subprocess.run(cmd, timeout=bound, cwd=REPO, env=ENV, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            self.fail(f"{label}: timed out after {bound:.0f} s")
            return None


ENV = dict(os.environ, PYTHONUNBUFFERED="1")
PRETRAIN = [sys.executable, "-m", "w2v2_pretrain.cli.pretrain"]


def trainer(dry: bool) -> list[str]:
    """The trainer of a GPU run (bf16-mixed on one GPU), or the demo's CPU one in the dry run."""
    quiet = ["trainer.enable_progress_bar=false", "probe.every_n_updates=0"]
    return ["trainer=cpu", *quiet] if dry else ["trainer=gpu", *quiet]


def last_step(run: Path) -> int | None:
    import torch

    last = run / "checkpoints" / "last.ckpt"
    if not last.is_file():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])


# ---- 1. environment -------------------------------------------------------------------------


def floors() -> list[dict]:
    """Each runtime requirement of pyproject.toml (and transformers, for export) against the
    version installed."""
    from importlib import metadata

    import tomllib
    from packaging.requirements import Requirement

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    rows = []
    for text in [*project["dependencies"], *project["optional-dependencies"]["export"]]:
        req = Requirement(text)
        try:
            have = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        fits = have is not None and req.specifier.contains(have, prereleases=True)
        rows.append(dict(name=req.name, required=str(req.specifier), installed=have, fits=fits))
    return rows


def environment(s: Section) -> None:
    import torch

    from w2v2_pretrain.hardware import peak_flops

    cuda = torch.cuda.is_available()
    props = torch.cuda.get_device_properties(0) if cuda else None
    name = props.name if props else None
    s.update(
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if cuda else None,
        cuda_available=cuda,
        gpu_name=name,
        gpu_count=torch.cuda.device_count() if cuda else 0,
        gpu_memory_gib=props.total_memory / 2**30 if props else None,
        compute_capability=f"{props.major}.{props.minor}" if props else None,
        bf16_supported=torch.cuda.is_bf16_supported() if cuda else None,
        peak_flops_bf16=peak_flops(name, "bf16") if name else None,
        peak_flops_fp32=peak_flops(name, "fp32") if name else None,
        packages=floors(),
    )
    s["floors_fit"] = all(row["fits"] for row in s["packages"])
    for row in s["packages"]:
        s.check(row["fits"], f"{row['name']} {row['installed']} is not {row['required']}")
    s.check(cuda or s.dry, "torch sees no CUDA device")


# ---- 2. the CUDA tests ----------------------------------------------------------------------


def cuda_tests(s: Section) -> None:
    import xml.etree.ElementTree as ET

    report = s.work / "cuda_tests.xml"
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-p", "no:cacheprovider", "-q"]
    cmd += ["--continue-on-collection-errors"]  # a module that fails to import is one failure
    cmd += [f"--junitxml={report}", "-o", "junit_family=xunit1", str(REPO / "tests")]
    s["command"] = " ".join(cmd[1:])
    if s.run("pytest -m cuda", cmd) is None or not report.is_file():
        return
    cases = ET.parse(report).getroot().iter("testcase")
    outcome: dict[str, str] = {}
    failures = []
    for case in cases:
        name = f"{case.get('classname')}::{case.get('name')}"
        bad = next((e for e in (case.find("failure"), case.find("error")) if e is not None), None)
        if bad is not None:
            outcome[name] = "failed"
            message = (bad.get("message") or "failed").splitlines() or ["failed"]
            failures.append(f"{name}: {message[0]}")
        else:
            outcome[name] = "skipped" if case.find("skipped") is not None else "passed"
    counts = list(outcome.values())
    s.update(
        selected=len(counts),
        passed=counts.count("passed"),
        failed=counts.count("failed"),
        skipped=counts.count("skipped"),
        failures=failures,
    )
    s.check(s["selected"] > 0, "no test is marked cuda")
    s.check(not failures, f"{len(failures)} CUDA tests failed")
    s.check(s.dry or s["skipped"] == 0, f"{s['skipped']} CUDA tests skipped on the GPU")


# ---- 3. a pretraining run: SIGTERM, resume, export ------------------------------------------


def sigterm(s: Section, run: Path, overrides: list[str], every: int) -> bool:
    """Start the run, SIGTERM its process group (as SLURM and Kubernetes do) once the periodic
    checkpoint at update ``every`` exists: it must exit 143 within the grace period with
    ``last.ckpt`` at the update it stopped at."""
    ckpt = run / "checkpoints" / f"step{every:07d}.ckpt"
    print(f"[{s.name}] start, SIGTERM after {ckpt.name}", flush=True)
    cmd = [*PRETRAIN, *overrides]
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, start_new_session=True)
    until = time.time() + s.left() * 0.4
    while not ckpt.is_file() and proc.poll() is None and time.time() < until:
        time.sleep(0.2)
    if not ckpt.is_file():
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        s.fail(f"no checkpoint at update {every} (exit {proc.wait()})")
        return False
    sent = time.time()
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        status = proc.wait(timeout=2 * SIGTERM_BOUND_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        status = proc.wait()
    s.update(
        sigterm_exit=status, sigterm_seconds=time.time() - sent, sigterm_update=last_step(run)
    )
    s.check(status == 128 + signal.SIGTERM, f"SIGTERM: exit {status}, not 143")
    s.check(s["sigterm_seconds"] <= SIGTERM_BOUND_S, f"SIGTERM: {s['sigterm_seconds']:.0f} s")
    return s.check((s["sigterm_update"] or 0) >= every, "SIGTERM: no last.ckpt at the stop")


def compare_export(s: Section, ckpt: Path, hf_dir: Path) -> None:
    """The exported transformers model against ours, on the GPU: the context network's output
    of the same audio in fp32 (equal to rounding) and under bf16 autocast (reported)."""
    import torch
    import transformers

    from w2v2_pretrain.model_sources import load_model

    device = "cpu" if s.dry else "cuda"
    ours = load_model(ckpt).to(device)
    theirs = transformers.Wav2Vec2ForPreTraining.from_pretrained(hf_dir).to(device).eval()
    audio = 0.1 * torch.randn(2, 48_000, generator=torch.Generator().manual_seed(0))
    audio = audio.to(device)
    errors = {}
    for label, bf16 in (("fp32", False), ("bf16", True)):
        with torch.no_grad(), torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            a = ours.extract(audio).hidden.float()
            b = theirs.wav2vec2(audio).last_hidden_state.float()
        errors[label] = float((a - b).abs().max() / b.abs().max())
    s.update(
        export_max_relative_error=errors["fp32"],
        export_bf16_max_relative_error=errors["bf16"],
        outputs_equal=errors["fp32"] <= 1e-4,
    )
    s.check(s["outputs_equal"], f"export: relative error {errors['fp32']:.1e} in fp32")


def pretrain(s: Section) -> None:
    run, hf = s.work / "pretrain", s.work / "pretrain_hf"
    updates, every = (6, 2) if s.dry else (40, 10)
    s["overrides"] = [
        "experiment=demo",
        *trainer(s.dry),
        *([] if s.dry else ["model=base"]),
        f"trainer.max_steps={updates}",
        f"trainer.val_check_interval={updates}",
        "trainer.limit_val_batches=2",
        f"callbacks.periodic.every_n_train_steps={every}",
        "codebook_image_every=0",
        f"hydra.run.dir={run}",
    ]
    if not sigterm(s, run, s["overrides"], every):
        return
    proc = s.run("resume=true", [*PRETRAIN, *s["overrides"], "resume=true"], share=0.6)
    s.update(resume_exit=proc and proc.returncode, final_update=last_step(run))
    ended = f"resume: exit {s['resume_exit']}, at update {s['final_update']} of {updates}"
    if not s.check(s["resume_exit"] == 0 and s["final_update"] == updates, ended):
        return
    last = run / "checkpoints" / "last.ckpt"
    export = [sys.executable, "-m", "w2v2_pretrain.cli.export", str(last), str(hf)]
    proc = s.run("w2v2-export", export, share=0.5)
    s["export_exit"] = proc and proc.returncode
    if s.check(s["export_exit"] == 0, f"export: exit {s['export_exit']}"):
        compare_export(s, last, hf)


# ---- 4. speed -------------------------------------------------------------------------------


def bench(s: Section, label: str, args: list[str], share: float, retry: bool = False):
    """scripts/benchmark.py with ``args``: the numbers of ours (and transformers') per step,
    or None (a failure recorded unless ``retry``: the caller tries another size)."""
    out = s.work / f"speed_{label}.json"
    cmd = [sys.executable, str(REPO / "scripts" / "benchmark.py"), *args, "--json", str(out)]
    proc = s.run(label, cmd, share)
    if proc is None or proc.returncode != 0:
        if not retry:
            s.fail(f"{label}: {'timed out' if proc is None else f'exit {proc.returncode}'}")
        return None
    res = json.loads(out.read_text())
    ours = res["implementations"]["ours"]
    theirs = res["implementations"].get("transformers", {})
    return dict(
        args=args,
        samples_per_update=round(res["batch"] * res["seconds_per_utterance"] * 16_000),
        audio_seconds_per_second=ours["audio_seconds_per_second"],
        ms_per_step=ours["timing_ms"]["step"],
        mfu=ours["mfu"],
        fraction_of_matmul_rate=ours["fraction_of_matmul_rate"],
        peak_memory_mib=ours["peak_memory_mib"],
        flops_per_audio_second=res["flops_per_audio_second"],
        compile_seconds=res["compile_seconds"],
        transformers_audio_seconds_per_second=theirs.get("audio_seconds_per_second"),
        speedup_over_transformers=res.get("speedup_over_transformers"),
    )


def device_memory_mib(dry: bool) -> float:
    if dry:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**20
    import torch

    return torch.cuda.get_device_properties(0).total_memory / 2**20


def largest_budget(s: Section, common: list[str], batch: int, paper: dict | None) -> None:
    """The batch (of the same clips) that fills 85% of the device's memory, estimated from the
    paper budget's peak (which also holds the model and AdamW's state, so the estimate errs
    low), then run; once more at 70% of it if that does not fit."""
    if paper is None:
        s["largest_budget"] = None
        return
    fits = int(batch * 0.85 * device_memory_mib(s.dry) / paper["peak_memory_mib"])
    fits = min(fits, batch * (2 if s.dry else 8))  # the dry run's RAM is not a GPU's
    for retry, size in ((True, fits), (False, int(fits * 0.7))):
        args = [*common, "--batch", str(size), "--no-transformers", "--steps", "3"]
        s["largest_budget"] = bench(s, f"largest_batch_{size}", args, 0.5, retry=retry)
        if s["largest_budget"] is not None:
            return


def typical(logged: dict, tag: str) -> float | None:
    """The median of a tag's values after its first (warm-up) one."""
    values = [v for _, v in logged.get(tag, [])][1:]
    return statistics.median(values) if values else None


def pipeline(s: Section) -> None:
    """A real run on the demo corpus (loader workers, collation, masks, Lightning): the
    data-wait fraction, audio-seconds per second and peak memory it logs."""
    from w2v2_pretrain.events import read_scalars

    run = s.work / "pipeline"
    updates, every = (6, 2) if s.dry else (30, 5)
    size = (
        [] if s.dry else ["model=base", "data.max_tokens=1400000", "data.max_sample_size=250000"]
    )
    cmd = [*PRETRAIN, "experiment=demo", *trainer(s.dry), *size, f"trainer.max_steps={updates}"]
    cmd += [f"trainer.val_check_interval={updates}", "trainer.limit_val_batches=1"]
    cmd += [f"trainer.log_every_n_steps={every}", "codebook_image_every=0"]
    cmd += ["callbacks.periodic.every_n_train_steps=1000000", f"hydra.run.dir={run}"]
    proc = s.run("pipeline", cmd)
    s["pipeline"] = None
    if proc is None or not s.check(proc.returncode == 0, f"pipeline: exit {proc.returncode}"):
        return
    logged = read_scalars(run)
    s["pipeline"] = dict(
        updates=updates,
        overrides=cmd[len(PRETRAIN) :],
        **{f: typical(logged, f"train/{f}") for f in PIPELINE_FIELDS if f != "updates"},
    )


def speed(s: Section) -> None:
    if s.dry:
        common = ["--preset", "tiny", "--seconds", "2", "--device", "cpu", "--precision", "fp32"]
        batch, steps = 2, 2
    else:  # 7 clips of 12.5 s: the paper's 1.4M samples per GPU
        common = [
            "--preset",
            "base",
            "--seconds",
            "12.5",
            "--device",
            "cuda",
            "--precision",
            "bf16",
        ]
        batch, steps = 7, 5
    common += ["--warmup", "1" if s.dry else "2"]
    paper = [*common, "--batch", str(batch), "--steps", str(steps)]
    s["runs"] = {}
    for label, extra, share in (
        ("paper_budget", [], 0.25),
        ("compile", ["--compile", "--no-transformers"], 0.45),
        ("checkpoint_activations", ["--checkpoint-activations", "--no-transformers"], 0.25),
    ):
        s["runs"][label] = bench(s, label, [*paper, *extra], share)
        s.save()
    largest_budget(s, common, batch, s["runs"]["paper_budget"])
    s.save()
    pipeline(s)


# ---- 5. learning ----------------------------------------------------------------------------


def learning(s: Section) -> None:
    """The demo's first updates of its 600-update schedule (the LR schedule's length kept) in
    bf16 and fp32: validation contrastive loss and accuracy against the CPU demo's."""
    from w2v2_pretrain.events import read_scalars

    updates, every = (4, 2) if s.dry else (300, 100)
    s["published_cpu_curve"] = PUBLISHED_DEMO_CURVE
    s["runs"] = {}
    for k, (label, precision) in enumerate((("bf16", "bf16-mixed"), ("fp32", "32"))):
        run = s.work / f"learning_{label}"
        cmd = [*PRETRAIN, "experiment=demo", *trainer(s.dry), f"trainer.precision={precision}"]
        cmd += [f"trainer.max_steps={updates}", "optim.scheduler.total_steps=600"]
        cmd += [f"trainer.val_check_interval={every}", f"hydra.run.dir={run}"]
        cmd += ["trainer.limit_val_batches=1"] if s.dry else []
        start = time.time()
        proc = s.run(f"learning {label}", cmd, share=1.0 if k else 0.5)
        if proc is None or not s.check(proc.returncode == 0, f"{label}: exit {proc.returncode}"):
            continue
        logged = read_scalars(run)
        loss = dict(logged.get("val/contrastive", []))
        chance = dict(logged.get("val/contrastive_chance", []))
        s["runs"][label] = dict(
            precision=precision,
            updates=updates,
            seconds=time.time() - start,
            val_contrastive=loss,
            val_accuracy=dict(logged.get("val/accuracy", [])),
            below_chance={u: chance[u] - v for u, v in loss.items() if u in chance},
            against_cpu={
                u: v - PUBLISHED_DEMO_CURVE[u]
                for u, v in loss.items()
                if u in PUBLISHED_DEMO_CURVE
            },
        )
        s.check(bool(loss), f"{label}: no val/contrastive logged")
        s.save()


# ---- the driver -----------------------------------------------------------------------------


def run_step(name: str, args) -> dict:
    """One step in a process of its own, killed (with everything it started) at its bound."""
    budget = STEPS[name][1 if args.dry_run else 0]
    section = args.work / "sections" / f"{name}.json"
    section.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--step", name, "--work", str(args.work)]
    cmd += ["--deadline", str(time.time() + budget)] + (["--dry-run"] if args.dry_run else [])
    start = time.time()
    with open(args.out / "gpu_check.log", "a") as log:
        print(f"==== {name} (at most {budget} s)", file=log, flush=True)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            status = proc.wait(timeout=budget + 10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            status = None
            proc.wait()
    result = json.loads(section.read_text()) if section.is_file() else {"errors": []}
    if status is None:
        result.update(status="timeout")
        result["errors"].append(f"stopped at its bound of {budget} s")
    elif status != 0:
        result.update(status="failed")
        result["errors"].append(f"the step's process ended with exit {status} (see the log)")
    result["seconds"] = round(time.time() - start, 1)
    result["missing_fields"] = [f for f in FIELDS[name] if f not in result]
    result["missing_fields"] += missing_inner(name, result)
    return result


def missing_inner(name: str, result: dict) -> list[str]:
    """The fields each speed run, pipeline and learning run lacks."""
    rows: dict[str, dict | None] = {}
    need: tuple[str, ...] = ()
    if name == "speed":
        rows = {**result.get("runs", {}), "largest_budget": result.get("largest_budget")}
        need = SPEED_FIELDS
        pipe = result.get("pipeline") or {}
        found = [f"pipeline.{f}" for f in PIPELINE_FIELDS if f not in pipe]
    elif name == "learning":
        rows, need, found = result.get("runs", {}), LEARNING_FIELDS, []
    else:
        return []
    for label, row in rows.items():
        found += [f"{label}.{f}" for f in need if f not in (row or {})]
    return found


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run", action="store_true", help="every step on the CPU, tiny")
    p.add_argument("--out", type=Path, default=Path("outputs/gpu_check"))
    p.add_argument("--work", type=Path, default=None, help="the runs' folders (OUT/work)")
    p.add_argument("--only", default=",".join(STEPS), help="steps, comma-separated")
    p.add_argument("--step", help=argparse.SUPPRESS)
    p.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = p.parse_args()
    args.work = (args.work or args.out / "work").resolve()
    if args.step:
        section = Section(args.step, args.work, args.deadline, args.dry_run)
        try:
            globals()[args.step](section)
        finally:
            section.save()
        return
    only = args.only.split(",")
    unknown = [n for n in only if n not in STEPS]
    if unknown:
        p.error(f"--only: no step {', '.join(unknown)} (the steps: {', '.join(STEPS)})")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "gpu_check.log").write_text("")
    report = {"dry_run": args.dry_run, "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    report["steps"] = {}
    for name in only:
        report["steps"][name] = run_step(name, args)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        line = report["steps"][name]
        print(f"{name}: {line['status']} in {line['seconds']} s", *line["errors"][:3], sep="\n  ")
    good = all(r["status"] == "ok" and not r["missing_fields"] for r in report["steps"].values())
    print(f"{args.out / 'gpu_check.json'}: {'every step ok' if good else 'NOT every step ok'}")
    sys.exit(0 if good else 1)


if __name__ == "__main__":
    main()
