"""Gateway settings (``VOICEMESH_GATEWAY_*``)."""

from __future__ import annotations

from functools import lru_cache
from ipaddress import ip_network
from pathlib import Path
from typing import Any

from pydantic import Field, IPvAnyNetwork, SecretStr
from pydantic_settings import SettingsConfigDict

from voicemesh.registry import RoutingMode
from voicemesh.services import WYOMING_PORT
from voicemesh.settings import ServiceSettings

DEFAULT_PANEL_DIR = Path(__file__).resolve().parent.parent / "control-panel"
DEFAULT_CLIENT_JS_DIR = DEFAULT_PANEL_DIR.parent / "client" / "js"


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
    detector_max_utilization: float = Field(0.5, ge=0, le=1)
    """A session opened while its STT replica's decode workers are busier than this runs
    without the detector: the engine's own VAD endpoints it, and the cores the detector
    would take (a second VAD and model per session) go to decoding. 1: always attach."""
    endpoint_grace_s: float = Field(2.0, ge=0)
    """After the detector's confirmed speech_end, flush the engine if it has not finalized."""
    backend_urls: list[str] = []
    """Static STT backends (http URLs) used when the registry lists none."""
    detector_urls: list[str] = []
    """Static detector backends used when the registry lists none."""
    probe_interval_s: float = Field(5.0, ge=0)
    """How often every replica's /health is probed (0: never); failures leave routing."""
    failed_hold_s: float = Field(5.0, gt=0)
    """How long a replica that just failed (refused a connection, timed out, stalled) is
    tried only after every other one."""
    stall_timeout_s: float = Field(3.0, gt=0)
    """A backend that sends nothing this long while audio is pending is failed over."""
    idle_ready_s: float = Field(30.0, gt=0)
    """A streaming client that sends no ``start`` or audio this long after ``ready`` is
    closed (``idle_timeout``, close code 4408)."""
    idle_session_s: float = Field(60.0, gt=0)
    """A streaming client that sends no message at all this long mid-session is closed
    (``idle_timeout``, 4408) after the finals it is owed; a live mic sends silence."""
    max_audio_ahead_s: float = Field(120.0, gt=0)
    """How far a stream may get ahead of both its last final and real time (a client sending
    faster than real time); a frame past it is refused with a non-fatal ``audio_ahead``."""
    resume_ttl_s: float = Field(60.0, gt=0, le=3600)
    """How long a dropped streaming session can be resumed (from its last write)."""
    resume_tail_s: float = Field(30.0, gt=0, le=300)
    """Most audio since the last final a resumable session keeps for its resume."""
    resume_keep_finals: int = Field(64, ge=1, le=10000)
    """Finals a resumable session keeps to send again to a client that missed them."""
    ack_interval_s: float = Field(1.0, gt=0, le=60)
    """How often a resumable session writes its new audio and ``ack``s it to the client."""
    max_utterance_s: float = Field(30.0, gt=0)
    """Longest utterance an engine makes without a final (theirs stop at 29 s); a backend
    sending partials of one utterance this long plus the stall timeout is failed over."""
    api_keys: list[SecretStr] = []
    """Client API keys; none configured means auth is off (the embedded default)."""
    api_keys_file: Path | None = None
    """A file with one API key per line (added to ``api_keys``)."""
    admin_key: SecretStr | None = None
    """Key for /v1/admin routes; without it admin routes accept any client key (or none)."""
    max_sessions_per_key: int = Field(8, ge=1)
    """Concurrent streaming sessions one key may hold."""
    max_sessions_total: int = Field(64, ge=1)
    """Concurrent streaming sessions on this gateway replica."""
    requests_per_minute_per_key: int = Field(120, ge=1)
    """HTTP requests and new sessions per minute for one key."""
    requests_per_minute_total: int = Field(1200, ge=1)
    """HTTP requests and new sessions per minute on this gateway replica."""
    upload_read_timeout_s: float = Field(30.0, gt=0)
    """An HTTP request body that sends nothing this long mid-body is answered 408
    ``upload_timeout`` and its connection closed (a slow body that keeps coming is not)."""
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    """Largest file accepted by POST /v1/audio/transcriptions."""
    request_timeout_s: float = Field(120.0, gt=0)
    """Time a backend may take for one file transcription before failing over."""
    busy_retry_after_s: int = Field(2, ge=1)
    """``retry_after`` told to a client refused a session slot (when one frees is unknown)."""
    status_interval_s: float = Field(1.0, gt=0, le=60)
    """How often ``WS /v1/ws/status`` sends a ``status_update``."""
    tts_audio_ttl_s: float = Field(300.0, gt=0, le=86400)
    """How long an ``audio_url`` of ``POST /v1/tts/synthesize`` (``format: json``) or
    ``POST /v1/tts/compare`` serves its audio."""
    tts_audio_max_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    """Audio kept for those URLs in all; past it the oldest goes first."""
    wyoming_enabled: bool = True
    """Serve the Wyoming protocol (Home Assistant's speech protocol) on its own TCP port."""
    wyoming_host: str = "127.0.0.1"
    """Interface the Wyoming server binds to. Wyoming has no authentication: keep it on
    loopback, or bind it wider and list the client networks in ``wyoming_allowed_networks``."""
    wyoming_port: int = Field(WYOMING_PORT, ge=0, le=65535)
    """TCP port of the Wyoming server (0: any free port; ``/health`` says which)."""
    wyoming_allowed_networks: list[IPvAnyNetwork] = Field(
        default_factory=lambda: [ip_network("127.0.0.0/8"), ip_network("::1/128")]
    )
    """Client networks (CIDR, a JSON list) the Wyoming server serves; others are refused."""
    wyoming_max_event_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    """Largest Wyoming event (header, data and payload) accepted; larger ones end the link."""
    benchmark_ttl_s: float = Field(7 * 86400.0, gt=0)
    """How long a benchmark run's results stay readable (``GET /v1/benchmark/results``)."""
    benchmark_keep_runs: int = Field(20, ge=1, le=1000)
    """Benchmark runs kept; past it the oldest are dropped."""
    benchmark_stale_s: float = Field(60.0, ge=5)
    """A run whose runner has not beaten for this long is reported ``failed`` (its
    gateway died), and its mesh-wide lock lapses."""
    benchmark_max_run_s: float = Field(900.0, gt=0)
    """A benchmark run still going after this long is stopped and reported ``failed``."""
    control_panel_dir: Path | None = DEFAULT_PANEL_DIR
    """Folder of the control panel served at ``/`` (public; its API calls carry keys); None: off."""
    client_js_dir: Path = DEFAULT_CLIENT_JS_DIR
    """Folder of ``voicemesh.js``, the JavaScript client the panel imports as ``/voicemesh.js``."""
    config_file: Path | None = None
    """A file of ``VOICEMESH_GATEWAY_*=value`` lines (``.env`` syntax) read at start and again
    by ``POST /v1/admin/config/reload``; the process environment wins where both set one."""


def load_settings(**values: Any) -> GatewaySettings:
    """Settings from the environment over the ``config_file`` it names (``values`` win)."""
    settings = GatewaySettings(**values)
    if settings.config_file is None:
        return settings
    rest = {name: value for name, value in values.items() if name != "config_file"}
    return read_config(settings.config_file, **rest)


def read_config(config_file: Path, **values: Any) -> GatewaySettings:
    """Settings from the environment over ``config_file``, which must exist."""
    if not config_file.is_file():
        raise ValueError(f"config_file {config_file} is not a readable file")
    return GatewaySettings(_env_file=config_file, **{"config_file": config_file, **values})


@lru_cache
def get_settings() -> GatewaySettings:
    """Settings from the environment (and its ``config_file``), read once."""
    return load_settings()
