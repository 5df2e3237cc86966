"""Shared ``VOICEMESH_*`` values are read once, when a service's settings are built."""

from __future__ import annotations

from pathlib import Path

import pytest

from voicemesh.clone.settings import CloneSettings
from voicemesh.settings import ServiceSettings
from voicemesh.tts.settings import TtsSettings

pytestmark = pytest.mark.unit


def test_redis_url_falls_back_to_the_shared_one_when_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("VOICEMESH_REDIS_URL", "redis://shared:6379/1")
    settings = ServiceSettings()
    assert settings.redis_url == "redis://shared:6379/1"
    monkeypatch.setenv("VOICEMESH_REDIS_URL", "redis://later:6379/2")
    assert settings.resolved_redis_url() == "redis://shared:6379/1"
    assert ServiceSettings().resolved_redis_url() == "redis://later:6379/2"


def test_own_redis_url_wins_and_empty_disables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("VOICEMESH_REDIS_URL", "redis://shared:6379/1")
    assert ServiceSettings(redis_url="redis://own:6379/0").resolved_redis_url() == (
        "redis://own:6379/0"
    )
    assert ServiceSettings(redis_url="").resolved_redis_url() is None


def test_default_redis_url_without_any_variable() -> None:
    assert ServiceSettings().resolved_redis_url() == "redis://127.0.0.1:6390/0"


def test_folders_follow_the_home_of_when_they_were_built(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    monkeypatch.setenv("VOICEMESH_HOME", str(tmp_path / "home"))
    clone = CloneSettings(redis_url="")
    tts = TtsSettings(redis_url="")
    monkeypatch.setenv("VOICEMESH_HOME", str(tmp_path / "elsewhere"))
    assert clone.voices_path == tmp_path / "home" / "voices"
    assert clone.cache_path == tmp_path / "home" / "clone-cache"
    assert tts.models_path == tmp_path / "home" / "models"
    assert TtsSettings(redis_url="", models_dir=tmp_path / "m").models_path == tmp_path / "m"
