"""Entry point of ``tts_vits``: VITS voices through sherpa-onnx, a catalogue, streaming, A/B.

Run: ``uvicorn --factory tts_vits.app:create_app``. The service itself is
:mod:`voicemesh.tts.service`.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voicemesh.tts.service import create_tts_app
from voicemesh.tts.settings import TtsSettings


class TtsVitsSettings(TtsSettings):
    """``VOICEMESH_TTS_VITS_*``: the VITS text-to-speech service."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_TTS_VITS_", extra="ignore")

    kind: str = "tts_vits"
    port: int = Field(8094, ge=1, le=65535)


@lru_cache
def get_settings() -> TtsVitsSettings:
    """Settings from the environment, read once."""
    return TtsVitsSettings()


def create_app(settings: TtsSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    return create_tts_app(settings or get_settings())
