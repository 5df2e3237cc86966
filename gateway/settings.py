"""Gateway settings (``VOICEMESH_GATEWAY_*``)."""

from __future__ import annotations

from functools import lru_cache

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voicemesh.registry import RoutingMode
from voicemesh.settings import ServiceSettings


class GatewaySettings(ServiceSettings):
    """``VOICEMESH_GATEWAY_*``: how the gateway routes and forwards sessions."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_GATEWAY_", extra="ignore")

    kind: str = "gateway"
    """Service name in the registry."""
    port: int = 8080
    default_mode: RoutingMode = "auto"
    """STT routing mode when Redis holds none (or cannot be reached)."""
    registry_refresh_s: float = Field(1.0, gt=0, le=10)
    """How often the gateway re-reads the registry snapshot and the mode."""
    gpu_max_load: float = Field(0.9, gt=0, le=1)
    """In auto mode, a GPU replica above this share of its session limit is skipped."""
    connect_timeout_s: float = Field(3.0, gt=0)
    """Time to open a backend WebSocket and get its ready message."""
    use_detector: bool = True
    """Run the speech detector alongside each session (events and endpointing backstop)."""
    endpoint_grace_s: float = Field(1.2, ge=0)
    """After the detector's confirmed speech_end, flush the engine if it has not finalized."""
    backend_urls: list[str] = []
    """Static STT backends (http URLs) used when the registry lists none."""
    detector_urls: list[str] = []
    """Static detector backends used when the registry lists none."""


@lru_cache
def get_settings() -> GatewaySettings:
    """Settings from the environment, read once."""
    return GatewaySettings()
