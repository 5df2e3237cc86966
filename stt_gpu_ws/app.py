"""Entry point of ``stt_gpu_ws``: the shared streaming engine with CUDA defaults.

Run: ``uvicorn --factory stt_gpu_ws.app:create_app``. Several decodes run at once
on the GPU (``workers``), so sessions share the device instead of queuing.
"""

from __future__ import annotations

from functools import lru_cache

from fastapi import FastAPI
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voicemesh.stt.service import create_stt_app
from voicemesh.stt.settings import SttSettings
from voicemesh.stt.types import Device


class SttGpuSettings(SttSettings):
    """``VOICEMESH_STT_GPU_*``: Whisper base, float16, on CUDA."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_STT_GPU_", extra="ignore")

    kind: str = "stt_gpu_ws"
    port: int = 8093
    device: Device = "cuda"
    workers: int = Field(4, ge=1, le=16)
    partial_interval_s: float = Field(0.3, ge=0.1, le=10)
    batch_max: int = Field(16, ge=1, le=64)


@lru_cache
def get_settings() -> SttGpuSettings:
    """Settings from the environment, read once."""
    return SttGpuSettings()


def create_app(settings: SttGpuSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    return create_stt_app(settings or get_settings())
