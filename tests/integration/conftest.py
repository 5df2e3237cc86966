"""The embedded mesh for integration tests: real Redis, real models, real services."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
import pytest

from tests.harness import RedisServer, ServiceProcess, free_port, start_routing_gateway
from voicemesh.settings import default_home


@dataclass
class Mesh:
    """Running services and where to reach them."""

    redis: RedisServer
    detector: ServiceProcess
    stt_cpu: ServiceProcess
    gateway: ServiceProcess
    tts_vits: ServiceProcess

    @property
    def ws_url(self) -> str:
        """The gateway's streaming endpoint."""
        return f"ws://127.0.0.1:{self.gateway.port}/ws/transcribe"

    def joining_env(self, tmp_path_factory: pytest.TempPathFactory, **extra: str) -> dict[str, str]:
        """The environment of another process joining this mesh's Redis (plus ``extra``)."""
        return {
            "VOICEMESH_REDIS_URL": self.redis.url,
            "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
            "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
            "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
            **extra,
        }

    @contextmanager
    def keyed_gateway(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        name: str,
        *,
        client_key: str,
        admin_key: str,
        **extra: str,
    ) -> Iterator[str]:
        """Another gateway on this mesh's Redis with a client and an admin key (Wyoming
        off); its URL once it routes to STT."""
        env = self.joining_env(
            tmp_path_factory,
            VOICEMESH_GATEWAY_API_KEYS=json.dumps([client_key]),
            VOICEMESH_GATEWAY_ADMIN_KEY=admin_key,
            VOICEMESH_GATEWAY_WYOMING_ENABLED="false",
            **extra,
        )
        gateway = start_routing_gateway(env, tmp_path_factory.mktemp(name))
        try:
            yield gateway.url
        finally:
            gateway.stop()


def _wait_for_routes(gateway_url: str, timeout_s: float = 20.0) -> None:
    """Wait until the gateway's registry view lists an STT backend, the detector and TTS."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway_url}/health", timeout=2).json()
        replicas = body.get("replicas")
        has_tts = isinstance(replicas, dict) and bool(replicas.get("tts_vits"))
        if body.get("stt_route") and body.get("detector") and has_tts:
            return
        time.sleep(0.2)
    raise RuntimeError(f"gateway never saw its backends: {body}")


@pytest.fixture(scope="session")
def mesh(redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    """Detector, CPU STT, VITS TTS and gateway as processes on loopback, registered in Redis."""
    logs = tmp_path_factory.mktemp("mesh-logs")
    env = {
        "VOICEMESH_REDIS_URL": redis_server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
        # Prepared models are a checksummed cache: share the user's, do not re-join.
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    detector = ServiceProcess("stt_tiny_ws", free_port(), env, logs)
    stt_cpu = ServiceProcess("stt_cpu_ws", free_port(), env, logs)
    tts_vits = ServiceProcess("tts_vits", free_port(), env, logs)
    gateway = ServiceProcess("gateway", free_port(), env, logs)
    services = [detector, stt_cpu, tts_vits, gateway]
    try:
        for service in services:
            service.start()
        for service in services:
            service.wait_healthy()
        _wait_for_routes(gateway.url)
        yield Mesh(redis_server, detector, stt_cpu, gateway, tts_vits)
    finally:
        for service in reversed(services):
            service.stop()
