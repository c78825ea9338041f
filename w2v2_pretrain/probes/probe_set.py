"""The probe set: a few minutes of held-out and fit utterances from a manifest folder, with
transcripts and speakers where the corpus has them. Fixed for a seed.

- Utterances: all of ``valid.tsv`` and a seeded slice of ``train.tsv``, up to ``max_seconds``
  of audio in all (the validation split first).
- Split: per speaker, ``held_out_fraction`` of its utterances (its validation ones first) are
  held out for scoring, the rest fit the probes; every speaker with two or more utterances is
  in both parts, so speaker accuracy is measured on unseen utterances of known speakers.
- Transcripts: LibriSpeech's ``<speaker>-<chapter>.trans.txt`` (``<utterance-id> TEXT`` lines
  for the files of its folder), or a fairseq ``<split>.wrd`` next to the manifest (one line
  per manifest entry). Normalised to upper case letters, apostrophes and single spaces.
- Speakers: the first folder of each path (LibriSpeech's ``speaker/chapter/file``).
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from w2v2_pretrain.data.audio import normalize, read_audio, sample_problem
from w2v2_pretrain.data.index import Manifest
from w2v2_pretrain.data.tsv import read_manifest
from w2v2_pretrain.errors import ConfigError, DataError, one_line
from w2v2_pretrain.logs import run_logger

log = run_logger(__name__)

SPLITS = ("valid", "train")
MIN_CTC_UTTERANCES = 4  # fit and held-out each: fewer says nothing about characters


@dataclass(frozen=True)
class ProbeUtterance:
    """One utterance of the probe set."""

    path: Path
    where: str
    """``manifest:line (path)``, how errors name it."""
    num_samples: int
    split: str
    """``valid`` or ``train``: the manifest it came from."""
    held_out: bool
    """Scored (True) or used to fit the probes (False)."""
    speaker: str | None
    transcript: str | None


@dataclass(frozen=True)
class ProbeSet:
    """The utterances, and for each probe that cannot run on them, why."""

    manifest_dir: Path
    utterances: tuple[ProbeUtterance, ...]
    skipped: dict[str, str]
    """probe name (``cer``, ``speaker_acc``) -> the reason it cannot run."""

    @property
    def seconds(self) -> float:
        return sum(u.num_samples for u in self.utterances) / 16_000

    def describe(self) -> str:
        held = sum(u.held_out for u in self.utterances)
        speakers = {u.speaker for u in self.utterances if u.speaker is not None}
        texts = sum(u.transcript is not None for u in self.utterances)
        return (
            f"probe set from {self.manifest_dir}: {len(self.utterances)} utterances "
            f"({self.seconds / 60:.1f} min; {len(self.utterances) - held} fit, {held} held "
            f"out), {len(speakers)} speakers, {texts} with transcripts"
        )


def normalize_transcript(text: str) -> str:
    """Upper case letters, apostrophes and single spaces (LibriSpeech's alphabet, any
    script's letters kept); punctuation dropped."""
    kept = "".join(c if c.isalpha() or c in "' " else " " for c in text.upper())
    return re.sub(r"\s+", " ", kept).strip()


def _trans_txt(folder: Path, cache: dict[Path, dict[str, str]]) -> dict[str, str]:
    if folder not in cache:
        found: dict[str, str] = {}
        for f in sorted(folder.glob("*.trans.txt")):
            try:
                lines = f.read_text(encoding="utf-8").splitlines()
            except (OSError, UnicodeDecodeError) as e:
                raise DataError(f"{f}: cannot read transcripts: {e}") from None
            for n, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                utt, _, text = line.strip().partition(" ")
                if not text.strip():
                    raise DataError(f"{f}:{n}: expected '<utterance-id> TEXT', got {line!r}")
                found[utt] = text
        cache[folder] = found
    return cache[folder]


def _wrd(manifest_dir: Path, split: str, manifest: Manifest) -> list[str] | None:
    path = manifest_dir / f"{split}.wrd"
    if not path.is_file():
        return None
    lines = path.read_text(encoding="utf-8").splitlines()
    if len(lines) != len(manifest):
        raise DataError(
            f"{path}: {len(lines)} lines but {manifest.source} lists {len(manifest)} files "
            "(a .wrd file has one transcript per manifest entry)"
        )
    return lines


def _speaker(relative: str) -> str | None:
    parts = Path(relative).parts
    return parts[0] if len(parts) > 1 else None


def build_probe_set(
    manifest_dir: str | Path,
    *,
    max_seconds: float = 240.0,
    held_out_fraction: float = 1 / 3,
    seed: int = 0,
) -> ProbeSet:
    """Choose the probe set's utterances (see the module docstring); deterministic for
    ``seed``. Raises a one-line `DataError` when the folder holds no usable manifest."""
    manifest_dir = Path(manifest_dir)
    if not 0 < held_out_fraction < 1:
        raise ConfigError(f"probe.held_out_fraction={held_out_fraction}: expected 0 < f < 1")
    if max_seconds <= 0:
        raise ConfigError(f"probe.max_seconds={max_seconds}: expected > 0")
    if not manifest_dir.is_dir():
        raise DataError(f"{manifest_dir}: manifest folder not found")
    rng = random.Random(seed)
    cache: dict[Path, dict[str, str]] = {}
    picked: list[tuple[str, int, Manifest, list[str] | None]] = []
    seen: set[Path] = set()  # a file listed in both manifests is taken once
    budget = max_seconds * 16_000
    for split in SPLITS:
        path = manifest_dir / f"{split}.tsv"
        if not path.is_file():
            continue
        manifest = read_manifest(path)
        order = list(range(len(manifest)))
        rng.shuffle(order)
        words = _wrd(manifest_dir, split, manifest)
        for i in order:
            n = int(manifest.num_samples[i])
            if (budget - n < 0 and picked) or manifest.audio_path(i) in seen:
                continue
            seen.add(manifest.audio_path(i))
            budget -= n
            picked.append((split, i, manifest, words))
    if not picked:
        raise DataError(f"{manifest_dir}: neither valid.tsv nor train.tsv holds an utterance")
    candidates = []
    for split, i, manifest, words in picked:
        rel, n = manifest.path(i), int(manifest.num_samples[i])
        audio = manifest.audio_path(i)
        if words is not None:
            text = words[i]
        else:
            text = _trans_txt(audio.parent, cache).get(Path(rel).name.split(".")[0])
        text = normalize_transcript(text) if text is not None else None
        candidates.append((split, audio, manifest.where(i), n, _speaker(rel), text))
    utterances = _split(candidates, held_out_fraction, rng)
    return ProbeSet(manifest_dir, utterances, _skipped(utterances))


def _split(candidates: list, fraction: float, rng: random.Random) -> tuple[ProbeUtterance, ...]:
    by_speaker: dict[str | None, list] = {}
    for c in candidates:
        by_speaker.setdefault(c[4], []).append(c)
    out = []
    for speaker in sorted(by_speaker, key=lambda s: (s is None, s or "")):
        group = by_speaker[speaker]
        # validation utterances are held out first (the model never trained on them)
        group.sort(key=lambda c: (c[0] != "valid", c[2]))
        held = round(fraction * len(group)) if len(group) > 1 else 0
        for k, (split, audio, where, n, spk, text) in enumerate(group):
            out.append(ProbeUtterance(audio, where, n, split, k < held, spk, text))
    rng.shuffle(out)
    return tuple(sorted(out, key=lambda u: (u.held_out, u.where)))


def _skipped(utterances: tuple[ProbeUtterance, ...]) -> dict[str, str]:
    skipped = {}
    fit_text = sum(1 for u in utterances if not u.held_out and u.transcript)
    held_text = sum(1 for u in utterances if u.held_out and u.transcript)
    if min(fit_text, held_text) < MIN_CTC_UTTERANCES:
        skipped["cer"] = (
            f"needs transcripts (LibriSpeech *.trans.txt beside the audio, or <split>.wrd "
            f"beside the manifest) for at least {MIN_CTC_UTTERANCES} fit and "
            f"{MIN_CTC_UTTERANCES} held-out utterances; found {fit_text} and {held_text}"
        )
    fit_spk = {u.speaker for u in utterances if not u.held_out and u.speaker is not None}
    held_spk = {u.speaker for u in utterances if u.held_out and u.speaker is not None}
    if len(fit_spk) < 2 or not held_spk:
        skipped["speaker_acc"] = (
            "needs speakers (LibriSpeech layout: the first folder of each path is the "
            f"speaker) with 2+ utterances each, from 2+ speakers; found {len(fit_spk)} "
            "speakers in the fit part"
        )
    return skipped


def load_probe_audio(
    probe_set: ProbeSet, sample_rate: int = 16_000, normalize_input: bool = False
) -> tuple[ProbeSet, list[np.ndarray]]:
    """The probe set less the files that cannot be read (each named in a warning), and the
    (L_i,) float32 samples of each of its utterances, at the model's rate and input contract."""
    kept, out = [], []
    for u in probe_set.utterances:
        try:
            wav = read_audio(u.path, sample_rate, expected_samples=u.num_samples, where=u.where)
        except DataError as e:
            log.warning("probe set: skipped %s", one_line(e))
            continue
        problem = sample_problem(wav)  # as the training loader refuses it
        if problem is not None:
            log.warning("probe set: skipped %s: %s", u.where, problem.detail)
            continue
        kept.append(u)
        out.append(normalize(wav) if normalize_input else wav)
    if not kept:
        raise DataError(f"{probe_set.manifest_dir}: no readable utterance for the probe set")
    if len(kept) < len(probe_set.utterances):
        utterances = tuple(kept)
        probe_set = ProbeSet(probe_set.manifest_dir, utterances, _skipped(utterances))
    return probe_set, out
