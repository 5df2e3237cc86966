"""Entry point of ``tts_clone``: voice profiles and synthesis in cloned voices.

Run: ``uvicorn --factory tts_clone.app:create_app``.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from voicemesh.clone.service import create_clone_app
from voicemesh.clone.settings import CloneSettings


class TtsCloneSettings(CloneSettings):
    """``VOICEMESH_TTS_CLONE_*``: GPT-SoVITS backends, the CPU fallback, the cache."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_TTS_CLONE_", extra="ignore")

    kind: str = "tts_clone"
    port: int = 8095


@lru_cache
def get_settings() -> TtsCloneSettings:
    """Settings from the environment, read once."""
    return TtsCloneSettings()


def create_app(settings: CloneSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    return create_clone_app(settings or get_settings())
