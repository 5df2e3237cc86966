"""The STT engine bounds oneDNN's primitive cache unless the environment sets it."""

from __future__ import annotations

import os
from types import SimpleNamespace
from typing import Any

import faster_whisper
import pytest

from voicemesh.stt.faster_whisper_engine import PRIMITIVE_CACHE_ENV, FasterWhisperTranscriber

pytestmark = pytest.mark.unit


class FakeWhisperModel:
    """Stands in for faster-whisper's model: records nothing, loads nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.model = SimpleNamespace(is_multilingual=False)
        self.supported_languages = ["en"]


@pytest.mark.parametrize(("before", "after"), [(None, "0"), ("64", "64")])
def test_the_cache_is_off_unless_the_environment_sets_it(
    monkeypatch: pytest.MonkeyPatch, before: str | None, after: str
) -> None:
    monkeypatch.setattr(faster_whisper, "WhisperModel", FakeWhisperModel)
    if before is None:
        monkeypatch.delenv(PRIMITIVE_CACHE_ENV, raising=False)
    else:
        monkeypatch.setenv(PRIMITIVE_CACHE_ENV, before)
    FasterWhisperTranscriber("unused")
    assert os.environ[PRIMITIVE_CACHE_ENV] == after
