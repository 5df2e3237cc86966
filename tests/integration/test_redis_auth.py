"""Redis with a password (``requirepass``): the services register and the gateway routes
through it end to end, and the password never shows in logs, ``/health``, the admin
status or the metrics, not even when it is wrong."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from client.streaming import stream_audio
from tests.harness import (
    RedisServer,
    ServiceProcess,
    clip_named,
    error_rate,
    free_port,
    stream_errors,
)
from voicemesh.audio_files import load_clip_16k
from voicemesh.settings import default_home

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

PASSWORD = f"vm-redis-{secrets.token_hex(12)}"
WRONG_PASSWORD = f"vm-wrong-{secrets.token_hex(12)}"
CLIP = clip_named("pocketsphinx-librivox-0880.wav")


@dataclass
class AuthMesh:
    """A password-protected Redis, one CPU STT replica and a gateway that both use it."""

    redis: RedisServer
    stt: ServiceProcess
    gateway: ServiceProcess

    @property
    def services(self) -> list[ServiceProcess]:
        """Every process whose output must not hold the password."""
        return [self.stt, self.gateway]


def _env(redis_url: str, home: Path) -> dict[str, str]:
    return {
        "VOICEMESH_REDIS_URL": redis_url,
        "VOICEMESH_HOME": str(home),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_USE_DETECTOR": "false",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }


def _wait_for_route(gateway: ServiceProcess, url: str, timeout_s: float = 60.0) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    body: dict[str, object] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway.url}/health", timeout=5).json()
        if body.get("stt_route") == [url]:
            return
        time.sleep(0.2)
    pytest.fail(
        f"the gateway never routed to {url} through the password Redis: {body}\n"
        f"{gateway.log_tail()}"
    )


@pytest.fixture(scope="module")
def auth_mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AuthMesh]:
    """The mesh on a Redis that refuses clients without the password."""
    home = tmp_path_factory.mktemp("redis-auth")
    server = RedisServer(home / "redis", password=PASSWORD)
    server.start()
    assert PASSWORD in server.url
    env = _env(server.url, home)
    stt = ServiceProcess("stt_cpu_ws", free_port(), env, home)
    gateway = ServiceProcess("gateway", free_port(), env, home)
    try:
        for service in (stt, gateway):
            service.start()
        for service in (stt, gateway):
            service.wait_healthy()
        _wait_for_route(gateway, stt.url)
        yield AuthMesh(server, stt, gateway)
    finally:
        for service in (gateway, stt):
            service.stop()
        server.stop()


def test_the_server_refuses_clients_without_the_password(auth_mesh: AuthMesh) -> None:
    anonymous = redis.Redis(host="127.0.0.1", port=auth_mesh.redis.port)
    try:
        with pytest.raises(redis.AuthenticationError):
            anonymous.ping()
    finally:
        anonymous.close()


async def test_a_session_streams_through_the_password_redis(auth_mesh: AuthMesh) -> None:
    ws_url = auth_mesh.gateway.url.replace("http://", "ws://") + "/ws/transcribe"
    result = await stream_audio(
        ws_url, load_clip_16k(CLIP.path), language="en", realtime=False, trailing_silence_s=1.0
    )
    assert not stream_errors(result), stream_errors(result)
    assert result.messages[0][1]["backend"] == auth_mesh.stt.url
    assert error_rate(CLIP.text, result.transcript) <= 20, result.transcript
    async with httpx.AsyncClient(timeout=5) as client:
        health = (await client.get(f"{auth_mesh.gateway.url}/health")).json()
    assert health["redis"] == "connected" and health["registry_error"] is None


def test_the_password_is_in_no_status_and_no_log(auth_mesh: AuthMesh) -> None:
    gateway, stt = auth_mesh.gateway.url, auth_mesh.stt.url
    pages = {
        path: httpx.get(path, timeout=10).text
        for path in (
            f"{gateway}/health",
            f"{gateway}/ready",
            f"{gateway}/v1/admin/status",
            f"{gateway}/v1/admin/services",
            f"{gateway}/v1/admin/mode",
            f"{gateway}/metrics",
            f"{stt}/health",
            f"{stt}/metrics",
        )
    }
    status = httpx.get(f"{gateway}/v1/admin/status", timeout=10).json()
    assert status["redis"] == "connected"
    assert status["services"]["stt_cpu_ws"][0]["url"] == stt
    for path, text in pages.items():
        assert PASSWORD not in text, path
    for service in auth_mesh.services:
        log = service.log_path.read_text(errors="replace")
        assert log, service.name
        assert PASSWORD not in log, f"{service.name}'s log holds the Redis password"


def test_a_wrong_password_is_reported_without_showing_it(
    auth_mesh: AuthMesh, tmp_path: Path
) -> None:
    import time

    url = auth_mesh.redis.url.replace(PASSWORD, WRONG_PASSWORD)
    gateway = ServiceProcess("gateway", free_port(), _env(url, tmp_path), tmp_path).start()
    try:
        deadline = time.monotonic() + 60
        body: dict[str, object] = {}
        while time.monotonic() < deadline:
            try:
                body = httpx.get(f"{gateway.url}/health", timeout=5).json()
            except httpx.HTTPError:
                body = {}
            if body.get("registry_error"):
                break
            time.sleep(0.3)
        assert body.get("redis") == "unreachable", (body, gateway.log_tail())
        assert body.get("registry_error"), body
        pages = [
            httpx.get(f"{gateway.url}{path}", timeout=10).text
            for path in ("/health", "/ready", "/v1/admin/status", "/metrics")
        ]
        gateway.stop()
        log = gateway.log_path.read_text(errors="replace")
        for text in [*pages, log]:
            assert WRONG_PASSWORD not in text and PASSWORD not in text, text[-2000:]
    finally:
        gateway.stop()
