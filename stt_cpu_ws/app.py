"""Entry point of ``stt_cpu_ws``: the shared streaming engine with CPU defaults.

Run: ``uvicorn --factory stt_cpu_ws.app:create_app``.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import FastAPI
from pydantic_settings import SettingsConfigDict

from voicemesh.stt.service import create_stt_app
from voicemesh.stt.settings import SttSettings
from voicemesh.stt.types import Device


class SttCpuSettings(SttSettings):
    """``VOICEMESH_STT_CPU_*``: Whisper base, int8, on the CPU."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_STT_CPU_", extra="ignore")

    kind: str = "stt_cpu_ws"
    port: int = 8092
    device: Device = "cpu"


@lru_cache
def get_settings() -> SttCpuSettings:
    """Settings from the environment, read once."""
    return SttCpuSettings()


def create_app(settings: SttCpuSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    return create_stt_app(settings or get_settings())
