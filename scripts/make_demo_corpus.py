"""Synthesize the embedded demo corpus: English speech in the LibriSpeech layout.

Writes ``ROOT/speaker/chapter/speaker-chapter-utterance.flac`` (16 kHz mono FLAC) and
``ROOT/speaker/chapter/speaker-chapter.trans.txt`` with espeak-ng, driven through ctypes. The
library comes from the PyPI package ``espeakng-loader`` (bundles the library and its voice data;
``pip install espeakng-loader``) or, failing that, Debian's ``libespeak-ng1``.

The output is deterministic for a seed: sentences come from a seeded generator, and each speaker
is a fixed voice, variant, pitch and rate.

    python scripts/make_demo_corpus.py --root data/demo
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import random
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio.functional as AF

TARGET_RATE = 16_000

# espeak-ng's speak_lib.h
AUDIO_OUTPUT_SYNCHRONOUS = 2
POS_CHARACTER = 1
ESPEAK_CHARS_AUTO = 0
ESPEAK_RATE, ESPEAK_PITCH, ESPEAK_RANGE = 1, 3, 4
SynthCallback = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)


@dataclass(frozen=True)
class Speaker:
    """One demo speaker: LibriSpeech-style id, an espeak voice+variant, pitch and rate."""

    speaker_id: int
    chapter_id: int
    voice: str
    pitch: int
    rate: int


SPEAKERS = (
    Speaker(103, 1240, "en-us+m3", 45, 175),
    Speaker(1034, 121119, "en+f3", 60, 180),
    Speaker(1040, 133433, "en-gb-scotland+m1", 40, 170),
    Speaker(1069, 133699, "en-gb-x-rp+f2", 70, 185),
    Speaker(1081, 125237, "en-029+m4", 35, 172),
    Speaker(1088, 134315, "en-us-nyc+f4", 55, 190),
    Speaker(1098, 133695, "en+m7", 50, 168),
    Speaker(1116, 132847, "en-gb-x-gbclan+f1", 65, 182),
)

SUBJECTS = (
    "the old sailor",
    "a quiet student",
    "my younger sister",
    "the village doctor",
    "our new neighbour",
    "the tired farmer",
    "a curious child",
    "the captain",
    "the grey cat",
    "an honest merchant",
    "the young teacher",
    "his elder brother",
    "the travelling musician",
    "a careful painter",
    "the baker",
    "the mayor of the town",
)
VERBS = (
    "walked slowly toward",
    "carried a lantern to",
    "looked for a letter near",
    "spoke softly about",
    "painted a picture of",
    "dreamed all night of",
    "ran quickly past",
    "wrote a long story about",
    "remembered the winter at",
    "found a silver coin beside",
    "built a small fence around",
    "sang an old song about",
    "waited patiently at",
)
PLACES = (
    "the harbour",
    "the northern hills",
    "the narrow bridge",
    "the empty market",
    "the church by the river",
    "the edge of the forest",
    "the station",
    "the little garden",
    "the frozen lake",
    "the library",
    "the stone tower",
    "the green valley",
    "the crowded inn",
)
TAILS = (
    "before the sun went down",
    "while the rain kept falling",
    "on a cold morning in march",
    "although nobody believed it",
    "and then went home for supper",
    "as the bells were ringing",
    "without saying a single word",
    "because the road was closed",
    "late in the evening",
    "with a heavy heart",
    "just after the storm",
    "in the middle of the summer",
)
QUESTIONS = (
    "Why did {s} never return to {p}?",
    "Have you ever seen {p} in the autumn?",
    "Who told {s} about {p}?",
    "Where were you when {s} arrived?",
)
NUMBERS = ("two", "three", "seven", "twelve", "forty", "one hundred", "nine")


def sentence(rng: random.Random) -> str:
    """One varied English sentence from a seeded generator."""
    s, v, p, t = (rng.choice(x) for x in (SUBJECTS, VERBS, PLACES, TAILS))
    kind = rng.random()
    if kind < 0.2:
        text = f"{s} {v} {p} {t}."
    elif kind < 0.35:
        text = rng.choice(QUESTIONS).format(s=s, p=p)
    elif kind < 0.5:
        text = f"{s} counted {rng.choice(NUMBERS)} boats near {p}."
    else:
        text = f"{s} {v} {p}."
    return text[0].upper() + text[1:]


def trim_silence(wav: np.ndarray, threshold: float = 0.01, keep: int = 1600) -> np.ndarray:
    """Cut leading/trailing silence, keeping ``keep`` samples (100 ms) of it at each end."""
    loud = np.flatnonzero(np.abs(wav) > threshold)
    if loud.size == 0:
        return wav
    return wav[max(loud[0] - keep, 0) : loud[-1] + keep]


def load_espeak() -> tuple[ctypes.CDLL, str | None]:
    """Return the espeak-ng library and its data path (None: the library's own default)."""
    try:
        import espeakng_loader

        return ctypes.CDLL(espeakng_loader.get_library_path()), espeakng_loader.get_data_path()
    except ImportError:
        name = ctypes.util.find_library("espeak-ng")
        if name is None:
            sys.exit(
                "error: espeak-ng not found: `pip install espeakng-loader` "
                "(or `apt-get install libespeak-ng1`)"
            )
        return ctypes.CDLL(name), None


class Synthesizer:
    """Synchronous espeak-ng synthesis to float32 numpy at the library's native rate."""

    def __init__(self) -> None:
        self.lib, data_path = load_espeak()
        path = data_path.encode() if data_path else None
        self.rate = self.lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, path, 0)
        if self.rate <= 0:
            sys.exit("error: espeak_Initialize failed (voice data not found?)")
        self._chunks: list[np.ndarray] = []

        def collect(wav, n, _events):
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = SynthCallback(collect)  # keep a reference: the library holds it
        self.lib.espeak_SetSynthCallback(self._callback)

    def speak(self, text: str, speaker: Speaker) -> np.ndarray:
        if self.lib.espeak_SetVoiceByName(speaker.voice.encode()) != 0:
            raise RuntimeError(f"espeak-ng has no voice {speaker.voice!r}")
        self.lib.espeak_SetParameter(ESPEAK_RATE, speaker.rate, 0)
        self.lib.espeak_SetParameter(ESPEAK_PITCH, speaker.pitch, 0)
        self.lib.espeak_SetParameter(ESPEAK_RANGE, 60, 0)
        self._chunks = []
        raw = text.encode()
        self.lib.espeak_Synth(
            raw, len(raw) + 1, 0, POS_CHARACTER, 0, ESPEAK_CHARS_AUTO, None, None
        )
        self.lib.espeak_Synchronize()
        return np.concatenate(self._chunks).astype(np.float32) / 32768.0


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path("data/demo"))
    parser.add_argument("--per-speaker", type=int, default=38, help="utterances per speaker")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    synth = Synthesizer()
    rng = random.Random(args.seed)
    if args.root.exists():
        shutil.rmtree(args.root)
    total_seconds, count = 0.0, 0
    for spk in SPEAKERS:
        chapter = args.root / str(spk.speaker_id) / str(spk.chapter_id)
        chapter.mkdir(parents=True)
        lines = []
        for u in range(args.per_speaker):
            text = sentence(rng)
            wav = synth.speak(text, spk)
            wav16 = AF.resample(torch.from_numpy(wav), synth.rate, TARGET_RATE).numpy()
            wav16 = trim_silence(np.clip(wav16, -1.0, 1.0))
            uid = f"{spk.speaker_id}-{spk.chapter_id}-{u:04d}"
            sf.write(chapter / f"{uid}.flac", wav16, TARGET_RATE, subtype="PCM_16")
            lines.append(f"{uid} {text.upper()}")
            total_seconds += len(wav16) / TARGET_RATE
            count += 1
        (chapter / f"{spk.speaker_id}-{spk.chapter_id}.trans.txt").write_text(
            "\n".join(lines) + "\n"
        )
    size = sum(p.stat().st_size for p in args.root.rglob("*.flac"))
    print(
        f"wrote {count} utterances, {total_seconds / 60:.1f} min, {len(SPEAKERS)} speakers, "
        f"{size / 1e6:.1f} MB of FLAC under {args.root}"
    )


if __name__ == "__main__":
    main()
