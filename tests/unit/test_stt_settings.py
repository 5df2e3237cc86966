"""How an STT service shares the CPU between its decode workers."""

from __future__ import annotations

import pytest

from stt_cpu_ws.app import SttCpuSettings
from voicemesh.stt import settings as stt_settings

pytestmark = pytest.mark.unit


def test_two_workers_by_default_each_with_half_the_cores(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stt_settings, "available_cores", lambda: 8)
    settings = SttCpuSettings(redis_url="")
    assert settings.workers == 2
    assert settings.decode_threads() == 4
    monkeypatch.setattr(stt_settings, "available_cores", lambda: 2)
    assert settings.decode_threads() == 1


def test_explicit_threads_win_and_a_worker_always_gets_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(stt_settings, "available_cores", lambda: 2)
    assert SttCpuSettings(redis_url="", cpu_threads=3).decode_threads() == 3
    assert SttCpuSettings(redis_url="", workers=16).decode_threads() == 1


def test_environment_sets_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEMESH_STT_CPU_WORKERS", "1")
    monkeypatch.setattr(stt_settings, "available_cores", lambda: 4)
    assert SttCpuSettings(redis_url="").decode_threads() == 4
