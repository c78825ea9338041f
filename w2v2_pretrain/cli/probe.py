"""``w2v2-probe MODEL [MODEL ...] --manifest-dir DIR``: representation probes of any model, per
layer, with a randomly initialised baseline (``--random-init tiny``)."""

from __future__ import annotations

import argparse

import torch

from w2v2_pretrain.cli import friendly_errors
from w2v2_pretrain.errors import ConfigError
from w2v2_pretrain.model_sources import read_model_source
from w2v2_pretrain.models import Wav2Vec2Model, preset
from w2v2_pretrain.probes.config import ProbeConfig
from w2v2_pretrain.probes.probe_set import build_probe_set, load_probe_audio
from w2v2_pretrain.probes.report import format_table, write_json
from w2v2_pretrain.probes.run import run_probes

RANDOM_INIT = "random-init:"


def _models(args: argparse.Namespace) -> list[tuple[str, object]]:
    out: list[tuple[str, object]] = []
    for name in args.random_init or []:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.init_seed)
            out.append((RANDOM_INIT + name, Wav2Vec2Model(preset(name)).eval()))
    for path in args.models:
        out.append((path, read_model_source(path).model().eval()))
    return out


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="w2v2-probe",
        description="Fit linear probes on frozen layers of each model (characters by CTC, "
        "speakers from utterance means) and label-free measures (effective rank, k-means "
        "silhouette), on a fixed probe set from a manifest folder; print a model x layer table.",
    )
    p.add_argument(
        "models",
        nargs="*",
        help="training checkpoint, model state file, fairseq checkpoint or transformers folder",
    )
    p.add_argument(
        "--manifest-dir",
        required=True,
        help="folder with valid.tsv and/or train.tsv (transcripts and speakers from the "
        "LibriSpeech layout)",
    )
    p.add_argument(
        "--random-init",
        action="append",
        metavar="PRESET",
        help="also probe a randomly initialised model of this preset (tiny, base, large): "
        "the baseline; repeatable",
    )
    p.add_argument(
        "--init-seed", type=int, default=1, help="seed of --random-init (default 1, the runs')"
    )
    p.add_argument(
        "--layers", type=int, nargs="+", help="layers (0: Transformer input; default all)"
    )
    p.add_argument("--json", metavar="OUT", help="write the records as a JSON list")
    p.add_argument("--max-seconds", type=float, default=240.0, help="audio in the probe set")
    p.add_argument("--seed", type=int, default=0, help="chooses the probe set (default 0)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    return p


def _probe_all(args: argparse.Namespace) -> list:
    """A `ProbeReport` per model, on one probe set (printed as it goes)."""
    config = ProbeConfig(layers=args.layers, max_seconds=args.max_seconds, seed=args.seed)
    config.validate("--")
    probe_set = build_probe_set(
        args.manifest_dir,
        max_seconds=config.max_seconds,
        held_out_fraction=config.held_out_fraction,
        seed=config.seed,
    )
    print(probe_set.describe(), flush=True)
    for probe, why in probe_set.skipped.items():
        print(f"skipped {probe}: {why}")
    audio_cache: dict[tuple[int, bool], tuple] = {}  # (probe set, audio) per input contract
    reports = []
    for name, model in _models(args):
        contract = model.cfg.input
        key = (contract.sample_rate, contract.normalize)
        if key not in audio_cache:
            audio_cache[key] = load_probe_audio(probe_set, *key)
        config.check_layers(model.cfg.context_network.num_layers, "--layers")
        readable, audio = audio_cache[key]
        report = run_probes(model.to(args.device), readable, audio, config, name)
        print(f"{name}: {report.seconds:.1f} s", flush=True)
        reports.append(report)
    return reports


@friendly_errors
def main(argv: list[str] | None = None) -> None:
    args = _parser().parse_args(argv)
    if not args.models and not args.random_init:
        raise ConfigError("no model: give MODEL paths and/or --random-init PRESET")
    reports = _probe_all(args)
    print()
    print(format_table(reports))
    chance = {k: v for rep in reports for k, v in rep.chance.items()}
    if "speaker_acc" in chance:
        print(f"speaker_acc chance (most frequent held-out speaker): {chance['speaker_acc']:.3f}")
    if args.json:
        print(f"wrote {write_json(reports, args.json)}")


if __name__ == "__main__":
    main()
