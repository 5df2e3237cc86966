"""Prometheus helpers: one registry per app, a ``/metrics`` route, common metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)


class ServiceMetrics:
    """The metrics every VoiceMesh service exports, on its own registry."""

    def __init__(self, service: str) -> None:
        self.registry = CollectorRegistry()
        self.service = service
        self.requests = Counter(
            "voicemesh_requests_total",
            "Requests and sessions handled",
            ["service", "route", "outcome"],
            registry=self.registry,
        )
        self.active_sessions = Gauge(
            "voicemesh_active_sessions",
            "Open streaming sessions",
            ["service"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "voicemesh_latency_seconds",
            "Latency by stage",
            ["service", "stage"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "voicemesh_errors_total",
            "Errors sent to clients",
            ["service", "code"],
            registry=self.registry,
        )

    def count(self, route: str, outcome: str) -> None:
        """Count one request or session by outcome."""
        self.requests.labels(self.service, route, outcome).inc()

    def observe(self, stage: str, seconds: float) -> None:
        """Record one latency sample."""
        self.latency.labels(self.service, stage).observe(seconds)

    def error(self, code: str) -> None:
        """Count an error by code."""
        self.errors.labels(self.service, code).inc()

    def render(self) -> tuple[bytes, str]:
        """The exposition text and its content type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class GatewayMetrics(ServiceMetrics):
    """The common metrics plus what only the gateway measures."""

    def __init__(self, service: str = "gateway") -> None:
        super().__init__(service)
        self.http_requests = Counter(
            "voicemesh_gateway_requests",
            "Requests by route template and status code "
            "(WebSockets: 101 when admitted, else the close code)",
            ["route", "status"],
            registry=self.registry,
        )
        self.failovers = Counter(
            "voicemesh_gateway_failovers",
            "Sessions and requests moved to another backend",
            ["reason"],
            registry=self.registry,
        )
        self.backend_choice = Counter(
            "voicemesh_gateway_backend_choice",
            "Backends chosen for sessions, by device",
            ["device"],
            registry=self.registry,
        )
        self.first_partial_latency = Histogram(
            "voicemesh_gateway_first_partial_latency_seconds",
            "Time from an utterance's first audio to its first partial at the client",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.final_latency = Histogram(
            "voicemesh_gateway_final_latency_seconds",
            "Final latency the engine reports (end of speech to final)",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
