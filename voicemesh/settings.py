"""Settings shared by every VoiceMesh service.

Each service subclasses :class:`ServiceSettings` with its own env prefix
(``VOICEMESH_GATEWAY_``, ``VOICEMESH_STT_CPU_``, ...) and field defaults.
Values shared across services (Redis, home folder, model cache) come from the plain
``VOICEMESH_`` prefix through :class:`CommonSettings`, read once when a service's
settings are built (:attr:`ServiceSettings.common`), never again at a call site.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

LogLevel = Literal["debug", "info", "warning", "error"]


def default_home() -> Path:
    """Folder for the model cache, run state and logs (``VOICEMESH_HOME`` overrides)."""
    env = os.environ.get("VOICEMESH_HOME")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "voicemesh"


@functools.lru_cache(maxsize=1)
def own_address() -> str:
    """This host's address as its own name resolves (a container's or a pod's IP)."""
    name = socket.gethostname()
    try:
        return socket.gethostbyname(name)
    except OSError as exc:
        raise ValueError(
            f"advertise_host=auto: this host's name {name!r} does not resolve ({exc}); "
            "set ADVERTISE_HOST to an address or ADVERTISE_URL to a URL"
        ) from exc


MIN_INTERNAL_TOKEN_CHARS = 16
"""Shortest internal token accepted: anything shorter is a placeholder, not a secret."""
PLACEHOLDER_PREFIXES = ("change-me", "replace-me")
"""How the example secrets (``.env.example``, ``deploy/k8s``) begin: never a real token."""


def check_internal_token(token: SecretStr | None, where: str) -> SecretStr | None:
    """``token`` when it can be a secret; a clear ValueError for a short or example one."""
    if token is None:
        return None
    value = token.get_secret_value()
    fix = 'make one with: python3 -c "import secrets; print(secrets.token_urlsafe(32))"'
    if len(value) < MIN_INTERNAL_TOKEN_CHARS:
        raise ValueError(
            f"{where}: the internal token has {len(value)} characters, fewer than "
            f"{MIN_INTERNAL_TOKEN_CHARS}; {fix}"
        )
    if value.startswith(PLACEHOLDER_PREFIXES):
        raise ValueError(f"{where}: the internal token is the example's placeholder; {fix}")
    return token


def _new_instance_id() -> str:
    return f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"


class CommonSettings(BaseSettings):
    """Values every process shares, read from ``VOICEMESH_*``."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_", extra="ignore")

    home: Path = Field(default_factory=default_home)
    """Root folder for caches, run state and logs."""
    models_dir: Path | None = None
    """Where prepared model files live (default: ``<home>/models``)."""
    redis_url: str = "redis://127.0.0.1:6390/0"
    """Redis holding the registry, the routing mode and stats."""
    internal_token: SecretStr | None = None
    """Secret the gateway sends on every call to an engine; when set, engines refuse any
    call without it but ``/health`` and ``/metrics`` (unset: engines trust every caller)."""
    internal_token_file: Path | None = None
    """A file holding ``internal_token`` (a Docker or Kubernetes secret), instead of it."""

    @model_validator(mode="after")
    def _read_internal_token(self) -> Self:
        """Take the token from its file, and refuse one too short to be a secret."""
        if self.internal_token_file is not None:
            if self.internal_token is not None:
                raise ValueError(
                    "set VOICEMESH_INTERNAL_TOKEN or VOICEMESH_INTERNAL_TOKEN_FILE, not both"
                )
            path = self.internal_token_file.expanduser()
            try:
                text = path.read_text(encoding="utf-8").strip()
            except OSError as exc:
                raise ValueError(f"internal_token_file {path}: {exc.strerror or exc}") from exc
            self.internal_token = SecretStr(text)
        where = "internal_token_file" if self.internal_token_file else "internal_token"
        check_internal_token(self.internal_token, where)
        return self

    @property
    def models_path(self) -> Path:
        """The resolved model cache folder."""
        return self.models_dir or self.home / "models"


class ServiceSettings(BaseSettings):
    """Base for one service's settings; subclasses set ``env_prefix`` and defaults."""

    model_config = SettingsConfigDict(extra="ignore")

    host: str = "127.0.0.1"
    """Interface to bind."""
    port: int = Field(8000, ge=1, le=65535)
    """Port to bind."""
    advertise_url: str | None = None
    """URL other services use to reach this replica (default: from host and port)."""
    advertise_host: str | None = None
    """Host (with ``port``) others reach this replica by when ``advertise_url`` is unset;
    ``auto``: this host's own address, so each container replica registers its own IP."""
    instance_id: str = Field(default_factory=_new_instance_id)
    """Unique id of this replica in the registry."""
    redis_url: str | None = None
    """Redis URL; None falls back to ``VOICEMESH_REDIS_URL``; '' disables registration.
    Resolved when the settings are built: afterwards it is never None."""
    registry_ttl_s: float = Field(10.0, gt=0)
    """How long a registration lives without a heartbeat."""
    heartbeat_interval_s: float = Field(2.0, gt=0)
    """How often the replica refreshes its registration and load."""
    log_level: LogLevel = "info"
    """Logging level."""
    max_frame_bytes: int = Field(1_048_576, ge=1024)
    """Largest binary WebSocket frame accepted; larger ones get an error message."""
    internal_token: SecretStr | None = None
    """The gateway-to-engine secret; None falls back to ``VOICEMESH_INTERNAL_TOKEN`` (or its
    ``_FILE``). Resolved when the settings are built."""

    _common: CommonSettings = PrivateAttr()

    @model_validator(mode="after")
    def _resolve_common(self) -> Self:
        """Read the shared ``VOICEMESH_*`` values once and fill in what falls back to them."""
        self._common = CommonSettings()
        if self.redis_url is None:
            self.redis_url = self._common.redis_url
        if self.internal_token is None:
            self.internal_token = self._common.internal_token
        return self

    @field_validator("internal_token")
    @classmethod
    def _internal_token_is_a_secret(cls, value: SecretStr | None) -> SecretStr | None:
        return check_internal_token(value, "internal_token")

    @property
    def common(self) -> CommonSettings:
        """The shared values (home, model cache, Redis) as they were when these were built."""
        return self._common

    @field_validator("heartbeat_interval_s")
    @classmethod
    def _heartbeat_below_ttl(cls, value: float, info) -> float:  # type: ignore[no-untyped-def]
        ttl = info.data.get("registry_ttl_s", 10.0)
        if value >= ttl:
            raise ValueError(f"heartbeat_interval_s ({value}) must be below registry_ttl_s ({ttl})")
        return value

    @property
    def public_url(self) -> str:
        """The URL this replica registers under."""
        if self.advertise_url:
            return self.advertise_url.rstrip("/")
        if self.advertise_host:
            host = own_address() if self.advertise_host == "auto" else self.advertise_host
        else:
            host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    def resolved_redis_url(self) -> str | None:
        """This service's Redis URL (the shared one unless set); None when disabled."""
        return self.redis_url or None
