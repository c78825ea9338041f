"""Decoding real files: other rates resampled or refused, several channels averaged or refused,
normalisation, and a crop window read from the file equal to the crop of the full decode."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from helpers import (
    manifest_of,
    write_tone,
)

from w2v2_pretrain.data.audio import read_audio
from w2v2_pretrain.data.dataset import AudioDataset, crop_start
from w2v2_pretrain.errors import DataError


def test_resample_and_refuse(tmp_path):
    write_tone(tmp_path / "a.wav", 1.5, rate=22_050)
    wav = read_audio(tmp_path / "a.wav", 16_000)
    assert wav.dtype == np.float32 and wav.shape == (24_000,)
    with pytest.raises(DataError, match=r"a.wav: sample rate 22050 Hz, expected 16000 Hz"):
        read_audio(tmp_path / "a.wav", 16_000, resample=False)


def test_downmix_and_refuse(tmp_path):
    data = write_tone(tmp_path / "s.flac", 1.0, channels=2)
    wav = read_audio(tmp_path / "s.flac")
    written = sf.read(tmp_path / "s.flac", dtype="float32")[0]
    np.testing.assert_allclose(wav, written.mean(axis=1), atol=1e-7)
    assert data.shape == (16_000, 2) and wav.shape == (16_000,)
    with pytest.raises(DataError, match=r"s.flac: 2 channels; set data.downmix=true"):
        read_audio(tmp_path / "s.flac", downmix=False)


def test_normalize(tmp_path):
    m = manifest_of(tmp_path, {"1/1/a.flac": 1.0})
    wav = AudioDataset(m, normalize=True)[0].wav
    assert abs(wav.mean()) < 1e-4 and abs(wav.std() - 1) < 1e-3


@pytest.mark.parametrize(
    "rate, fmt", [(16_000, "flac"), (22_050, "flac"), (8_000, "wav"), (44_100, "flac")]
)
def test_windowed_read_equals_crop_of_full_decode(tmp_path, rate, fmt):
    """A random crop decodes only its window, and gets the samples the full decode (resampled
    if the file's rate is another) has there: at the start, the end and inside, stereo too.
    At the file's own rate bit for bit; resampled, to float32 rounding (the convolution runs
    over another length, so its sums are ordered differently)."""
    path = tmp_path / f"a.{fmt}"
    write_tone(path, 3.0, rate=rate, channels=2, seed=3)
    full = read_audio(path, 16_000)
    crop = 8_000
    atol = 0 if rate == 16_000 else 2e-6
    for start in (0, 1, 319, 12_345, len(full) - crop - 1, len(full) - crop):
        window = read_audio(path, 16_000, crop=crop, start_of=lambda _, s=start: s)
        assert window.shape == (crop,)
        np.testing.assert_allclose(window, full[start : start + crop], rtol=0, atol=atol)
    # through the dataset: the same crops as the full decode then cropped
    m = manifest_of(tmp_path / "m", {"x.flac": 3.0}, rate=rate)
    ds = AudioDataset(m, max_sample_size=crop, seed=5)
    whole = read_audio(m.audio_path(0), 16_000)
    for epoch in range(3):
        u = ds[(0, epoch)]
        start = crop_start(len(whole), crop, u.seed)
        np.testing.assert_allclose(u.wav, whole[start : start + crop], rtol=0, atol=atol)
