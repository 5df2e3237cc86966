"""Entry point of ``stt_tiny_ws``: ``WS /ws/detect`` tells speech from silence, frame by frame.

Run: ``uvicorn --factory stt_tiny_ws.app:create_app``. The service itself is
:mod:`voicemesh.detect.service`.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from voicemesh.detect.service import create_detector_app
from voicemesh.detect.settings import DetectorSettings


class SttTinySettings(DetectorSettings):
    """``VOICEMESH_STT_TINY_*``: the speech detector (Silero VAD, Whisper tiny.en)."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_STT_TINY_", extra="ignore")

    kind: str = "stt_tiny_ws"
    port: int = 8091


@lru_cache
def get_settings() -> SttTinySettings:
    """Settings from the environment, read once."""
    return SttTinySettings()


def create_app(settings: DetectorSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    return create_detector_app(settings or get_settings())
