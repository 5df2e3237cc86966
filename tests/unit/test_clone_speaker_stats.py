"""The CPU cloning engine's speaker statistics, kept beside the reference for every replica."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from voicemesh.clone import engines
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.world import SpeakerStats, load_stats, stats_path

pytestmark = pytest.mark.unit


class SilentVoice:
    """A stand-in stock voice: the statistics never synthesise."""

    sample_rate = 22050

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        raise AssertionError("not used")


def reference(folder: Path) -> Path:
    """Two seconds of a voiced, gliding tone with harmonics, as a WAV."""
    rate = 16000
    t = np.arange(2 * rate) / rate
    f0 = 120 + 20 * np.sin(2 * np.pi * 0.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / rate
    audio = sum(np.sin(k * phase) / k for k in range(1, 12)) * 0.2
    path = folder / "abc123.wav"
    sf.write(path, audio.astype(np.float32), rate)
    return path


def test_a_second_replica_reads_what_the_first_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = reference(tmp_path)
    first = WorldAdaptedVits(SilentVoice(), "stock")  # type: ignore[arg-type]
    measured = first.speaker(path, "abc123")
    assert 100 < measured.f0_hz < 145
    assert stats_path(path).is_file()

    def no_harvest(x: np.ndarray, rate: int) -> SpeakerStats:
        raise AssertionError("measured again")

    monkeypatch.setattr(engines, "analyze_speaker", no_harvest)
    second = WorldAdaptedVits(SilentVoice(), "stock")  # type: ignore[arg-type]
    read = second.speaker(path, "abc123")
    assert read.lf0_mean == measured.lf0_mean and read.lf0_std == measured.lf0_std
    assert np.array_equal(read.mean_log_env, measured.mean_log_env)


def test_an_unreadable_statistics_file_is_measured_again(tmp_path: Path) -> None:
    path = reference(tmp_path)
    stats_path(path).write_bytes(b"not an npz")
    assert load_stats(stats_path(path)) is None
    stats = WorldAdaptedVits(SilentVoice(), "stock").speaker(path, "abc123")  # type: ignore[arg-type]
    kept = load_stats(stats_path(path))
    assert kept is not None and kept.lf0_mean == stats.lf0_mean
