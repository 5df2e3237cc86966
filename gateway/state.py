"""What one gateway replica holds while it runs, shared by its routers.

Routes take it as a ``state: GatewayStateDep`` parameter (:mod:`gateway.deps`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import httpx
import numpy as np

from gateway.keys import KeyRing
from gateway.limits import GatewayLimits
from gateway.registry_view import RegistryView
from gateway.session_store import MemorySessionStore, RedisSessionStore, SessionStore
from gateway.settings import GatewaySettings
from gateway.tts_audio import AudioStore
from voicemesh.internal_token import internal_headers
from voicemesh.metrics import GatewayMetrics
from voicemesh.registry import ReplicaInfo

_LOGGER = logging.getLogger(__name__)


def iso_timestamp(when: float | None = None) -> str:
    """``when`` (Unix time, default now) in ISO 8601 UTC with milliseconds, ``...Z``."""
    moment = datetime.fromtimestamp(time.time() if when is None else when, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def feed_message(event: str, data: dict[str, Any]) -> dict[str, Any]:
    """One message of ``WS /v1/ws/status``: ``{"type", "timestamp", "data"}``."""
    return {"type": event, "timestamp": iso_timestamp(), "data": data}


class EventBus:
    """In-process pub/sub of gateway events for ``WS /v1/ws/status`` followers.

    Each subscriber gets its own bounded queue; a slow follower loses its oldest
    events instead of slowing the gateway down.
    """

    def __init__(self, max_queue: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[dict[str, Any]]] = set()
        self._max_queue = max_queue

    def publish(self, event: str, **data: Any) -> None:
        """Send ``{"type": event, "timestamp": ..., "data": data}`` to every follower."""
        message = feed_message(event, data)
        for queue in list(self._subscribers):
            if queue.full():
                with contextlib.suppress(asyncio.QueueEmpty):
                    queue.get_nowait()
            queue.put_nowait(message)

    @contextlib.asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[dict[str, Any]]]:
        """A queue of events for as long as the context is open."""
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(self._max_queue)
        self._subscribers.add(queue)
        try:
            yield queue
        finally:
            self._subscribers.discard(queue)


RequestType = Literal["asr", "tts", "clone", "other"]

ASR_KINDS = frozenset({"stream", "transcription"})
"""Stats kinds of speech recognition: streams (any front door) and file transcriptions."""
NOT_REQUESTS = frozenset({"final"})
"""Stats kinds that time a part of a request (one utterance of a stream), not a request."""


def request_type(kind: str) -> RequestType:
    """What a request of stats kind ``kind`` is: ``asr``, ``tts``, ``clone`` or ``other``."""
    if kind in ASR_KINDS:
        return "asr"
    if kind.startswith("clone"):
        return "clone"
    if kind == "speech" or kind.startswith(("tts", "wyoming_tts")):
        return "tts"
    return "other"


@dataclass
class RequestStats:
    """Counters and recent latencies per kind of request (stream, transcription, ...)."""

    totals: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    errors: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies_ms: dict[str, deque[float]] = field(
        default_factory=lambda: defaultdict(lambda: deque(maxlen=500))
    )

    def record(self, kind: str, *, ok: bool, latency_ms: float | None = None) -> None:
        """Count one request of ``kind`` and remember its latency."""
        self.totals[kind] += 1
        if not ok:
            self.errors[kind] += 1
        if latency_ms is not None:
            self.latencies_ms[kind].append(latency_ms)

    def summary(self) -> dict[str, Any]:
        """Totals, error rate, mean and p95 latency per kind."""
        out: dict[str, Any] = {}
        for kind, total in self.totals.items():
            lat = list(self.latencies_ms.get(kind, ()))
            out[kind] = {
                "total": total,
                "errors": self.errors.get(kind, 0),
                "error_rate": round(self.errors.get(kind, 0) / total, 4) if total else 0.0,
                "latency_ms_avg": round(float(np.mean(lat)), 1) if lat else None,
                "latency_ms_p95": round(float(np.percentile(lat, 95)), 1) if lat else None,
            }
        return out


@dataclass
class GatewayState:
    """Everything the gateway's routes share."""

    settings: GatewaySettings
    view: RegistryView
    metrics: GatewayMetrics
    events: EventBus = field(default_factory=EventBus)
    stats: RequestStats = field(default_factory=RequestStats)
    started_at: float = field(default_factory=time.time)
    active_sessions: int = 0
    in_flight_requests: int = 0
    """HTTP requests this replica is answering now."""
    keys: KeyRing = field(init=False)
    """Client and admin API keys (:mod:`gateway.keys`)."""
    limits: GatewayLimits = field(init=False)
    """Request-rate and session limits of this replica (:mod:`gateway.limits`)."""
    wyoming: str = "off"
    """The Wyoming server's address (``tcp://host:port``), ``off``, or why it is not up."""
    tts_voices: tuple[float, frozenset[str]] = (0.0, frozenset())
    """When the TTS service's installed voices were last read, and their ids."""
    tts_audio: AudioStore = field(init=False)
    """Synthesized audio behind short-lived ``/v1/tts/audio/...`` URLs."""
    sessions: SessionStore = field(init=False)
    """Resumable streaming sessions (:mod:`gateway.resume`): Redis, or memory without it."""
    resumable: dict[str, Callable[[], None]] = field(default_factory=dict)
    """Sessions streaming through this replica now: a resume here ends the one it replaces."""
    http: httpx.AsyncClient = field(init=False)
    """The one HTTP client every request to a backend goes through (closed by the app's
    lifespan). One for all: building a client costs about 50 ms here (its TLS context),
    more than a cached answer takes, and its pool keeps connections to replicas open."""

    def __post_init__(self) -> None:
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(
                self.settings.request_timeout_s, connect=self.settings.connect_timeout_s
            ),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64),
            trust_env=False,
            # Engines answer only callers with the internal token (voicemesh.internal_token).
            headers=internal_headers(self.settings.internal_token),
        )
        self.keys = KeyRing.from_settings(self.settings)
        registry = self.view.client
        ttl_s = self.settings.resume_ttl_s
        self.sessions = (
            MemorySessionStore(ttl_s)
            if registry is None
            else RedisSessionStore(registry.redis_url, prefix=registry.prefix, ttl_s=ttl_s)
        )
        self.tts_audio = AudioStore(
            self.settings.tts_audio_ttl_s, self.settings.tts_audio_max_bytes
        )
        self.limits = GatewayLimits(
            requests_per_key=self.settings.requests_per_minute_per_key,
            requests_total=self.settings.requests_per_minute_total,
            sessions_per_key=self.settings.max_sessions_per_key,
            sessions_total=self.settings.max_sessions_total,
            busy_retry_after_s=self.settings.busy_retry_after_s,
        )

    def record_request(
        self,
        kind: str,
        *,
        request_id: str,
        model: str | None,
        status: int,
        latency_ms: float,
        **event: Any,
    ) -> None:
        """Account for one finished HTTP request: stats, metrics and a ``request_completed``
        (``status``: the HTTP status; its ``type`` is :func:`request_type` of ``kind``)."""
        ok = status < 400
        self.stats.record(kind, ok=ok, latency_ms=latency_ms)
        self.metrics.count(kind, "ok" if ok else "error")
        self.metrics.observe(kind, latency_ms / 1000)
        self.events.publish(
            "request_completed",
            request_id=request_id,
            type=request_type(kind),
            model=model,
            processing_time_ms=latency_ms,
            status="ok" if ok else "error",
            http_status=status,
            kind=kind,
            **event,
        )

    def record_stream(
        self,
        session_id: str,
        backend: ReplicaInfo | None,
        *,
        model: str | None,
        latency_ms: float,
        **event: Any,
    ) -> None:
        """Account for one finished stream (any front door): stats and a
        ``request_completed`` (``ok`` when it ended on a backend; its time is its length)."""
        ok = backend is not None
        self.stats.record("stream", ok=ok)
        self.events.publish(
            "request_completed",
            request_id=session_id,
            type=request_type("stream"),
            model=backend.model if backend is not None else model,
            processing_time_ms=latency_ms,
            status="ok" if ok else "error",
            kind="stream",
            session_id=session_id,
            backend=backend.url if backend is not None else None,
            **event,
        )
