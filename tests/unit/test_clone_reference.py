"""Reference checks: trimming, window choice, level, clipping, SNR (pure, on made-up signals)."""

from __future__ import annotations

import numpy as np
import pytest

from tests.harness import SPEECH_DIR
from voicemesh.audio import resample
from voicemesh.audio_files import read_audio_file
from voicemesh.clone.reference import (
    ReferenceRejected,
    best_window,
    clipped_ratio,
    prepare_reference,
)

pytestmark = pytest.mark.unit
RATE = 16000


def speechlike(seconds: float, level: float = 0.2, seed: int = 0) -> np.ndarray:
    """Syllable-like bursts of harmonic sound with short gaps (modulated, like speech)."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    voice = sum(np.sin(k * phase) / k for k in range(1, 8))
    envelope = np.clip(np.sin(2 * np.pi * 3.0 * t), 0, None) ** 0.5
    x = voice * envelope + rng.normal(0, 0.001, t.size)
    return (level * x / np.max(np.abs(x))).astype(np.float32)


def silence(seconds: float, noise: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(1)
    return (
        rng.normal(0, noise, int(seconds * RATE)).astype(np.float32)
        if noise
        else (np.zeros(int(seconds * RATE), dtype=np.float32))
    )


def test_trims_leading_and_trailing_silence() -> None:
    x = np.concatenate([silence(1.5), speechlike(4.0), silence(2.0)])
    ref = prepare_reference(x, RATE)
    assert 3.9 <= ref.duration_s <= 4.4
    assert 1.3 <= ref.trimmed_from_s <= 1.5
    assert ref.warnings == []


def test_longer_speech_keeps_the_best_ten_seconds_and_says_so() -> None:
    # 6 s of speech, 4 s of near-silence (inside the speech), 8 s of speech: the best
    # 10 s window is the one with the most speech frames.
    x = np.concatenate(
        [speechlike(6.0, seed=2), silence(4.0, noise=0.0005), speechlike(8.0, seed=3)]
    )
    ref = prepare_reference(x, RATE)
    assert ref.duration_s == pytest.approx(10.0, abs=0.05)
    assert ref.warnings and "best 10 s window" in ref.warnings[0]
    assert ref.trimmed_from_s >= 7.5  # all of the later 8 s, as little of the gap as fits


def test_too_short_is_refused_with_the_length() -> None:
    with pytest.raises(ReferenceRejected) as info:
        prepare_reference(np.concatenate([silence(1.0), speechlike(2.0), silence(1.0)]), RATE)
    assert info.value.code == "reference_too_short"
    assert info.value.status_code == 422
    assert "2." in info.value.message


def test_silence_is_refused() -> None:
    with pytest.raises(ReferenceRejected) as info:
        prepare_reference(silence(5.0, noise=0.0001), RATE)
    assert info.value.code == "silent_reference"


def test_clipping_is_refused() -> None:
    x = np.clip(speechlike(5.0, level=1.0) * 4.0, -1.0, 1.0)
    assert clipped_ratio(x) > 0.01
    with pytest.raises(ReferenceRejected) as info:
        prepare_reference(x, RATE)
    assert info.value.code == "reference_clipped"


def test_single_full_scale_peaks_are_not_clipping() -> None:
    x = speechlike(5.0, level=0.5)
    x[::4000] = 1.0
    assert clipped_ratio(x) == 0.0


def test_noise_is_refused() -> None:
    rng = np.random.default_rng(5)
    x = speechlike(5.0, level=0.1) + rng.normal(0, 0.05, 5 * RATE).astype(np.float32)
    with pytest.raises(ReferenceRejected) as info:
        prepare_reference(x, RATE)
    assert info.value.code == "reference_noisy"


def test_too_quiet_is_refused() -> None:
    x = np.concatenate(
        [silence(0.5, noise=0.00001), speechlike(4.0, level=0.015), silence(0.5, noise=0.00001)]
    )
    with pytest.raises(ReferenceRejected) as info:
        prepare_reference(x, RATE)
    assert info.value.code == "reference_too_quiet"


def test_output_is_levelled_without_clipping() -> None:
    ref = prepare_reference(speechlike(5.0, level=0.05), RATE)
    assert float(np.max(np.abs(ref.audio))) <= 0.95 + 1e-6
    rms = 20 * np.log10(np.sqrt(np.mean(ref.audio.astype(np.float64) ** 2)))
    assert rms > -26.0


def test_best_window_picks_the_densest_stretch() -> None:
    mask = np.array([1, 0, 0, 0, 1, 1, 1, 0], dtype=bool)
    assert best_window(mask, 3) == 4


@pytest.mark.parametrize("name", ["whisper-jfk.wav", "pocketsphinx-librivox-0870.wav"])
def test_real_speech_clips_are_accepted(name: str) -> None:
    x, rate = read_audio_file(SPEECH_DIR / name)
    ref = prepare_reference(resample(x, rate, 32000), 32000)
    assert 3.0 <= ref.duration_s <= 10.0
    assert ref.snr_db >= 12.0
