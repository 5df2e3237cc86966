"""Only the gateway speaks to the engines (issue 15): the internal token, both ways.

Every engine service (its real ``create_app``) refuses HTTP and WebSocket calls without
the token or with a wrong one, and keeps ``/health`` and ``/metrics`` open; the real
gateway sends the token on HTTP and on WebSockets. And the attack of the issue, on the
real ``tts_clone``: a profile made through the gateway with key A; the clone service's
own port, asked with A's fingerprint in ``X-VoiceMesh-Key-Id``, refuses without the
token; through the gateway key B still gets 404.
"""

from __future__ import annotations

import importlib
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app as create_gateway
from gateway.keys import fingerprint
from gateway.settings import GatewaySettings
from tests.harness import RedisServer, ThreadedServer, assert_error, empty_redis_db, free_port
from tests.service.test_clone_service import make_settings, reference_bytes
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.service import create_clone_app
from voicemesh.protocol import CLOSE_UNAUTHORIZED, INTERNAL_TOKEN_HEADER, OWNER_HEADER
from voicemesh.settings import CommonSettings

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

TOKEN = "internal-token-of-this-test-mesh-0123456789"
WRONG = "internal-token-of-another-mesh-9876543210"
KEY_A = "client-key-alice-0001"
KEY_B = "client-key-bob-0002"
TOKEN_TEST_DB = 10
"""A database of its own on the shared test Redis (the other modules use 6 to 9)."""

ENGINES = {
    "stt_tiny_ws": [("GET", "/openapi.json")],
    "stt_cpu_ws": [("POST", "/v1/transcribe"), ("GET", "/openapi.json")],
    "stt_gpu_ws": [("POST", "/v1/transcribe"), ("GET", "/docs")],
    "tts_vits": [("POST", "/v1/synthesize"), ("GET", "/v1/voices")],
    "tts_clone": [("GET", "/v1/voices"), ("POST", "/v1/synthesize"), ("DELETE", "/v1/voices/x")],
}
"""Each engine service and HTTP routes of it (its schema pages included) to try."""
SOCKETS = {
    "stt_tiny_ws": "/ws/detect",
    "stt_cpu_ws": "/ws/transcribe",
    "stt_gpu_ws": "/ws/transcribe",
}


def engine_app(name: str, tmp_path: Path, token: str | None = TOKEN) -> FastAPI:
    """The service's own ``create_app`` on settings with ``token`` (lifespan not run)."""
    module = importlib.import_module(f"{name}.app")
    settings_class = next(
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and value.__name__.endswith("Settings")
        and value.__module__ == module.__name__
    )
    extra: dict[str, Any] = {"redis_url": ""}
    if name == "tts_clone":
        # It needs a Redis URL to be built; with no lifespan here it never connects.
        extra = {
            "redis_url": "redis://127.0.0.1:9/0",
            "voices_dir": tmp_path / "voices",
            "cache_dir": tmp_path / "cache",
        }
    settings = settings_class(internal_token=SecretStr(token) if token else None, **extra)
    app: FastAPI = module.create_app(settings)
    return app


def refused_over_http(response: httpx.Response) -> None:
    """A 401 ``internal_token_required`` in the one error shape, the token never echoed."""
    message = assert_error(response, 401, "internal_token_required")
    assert INTERNAL_TOKEN_HEADER in message and "gateway" in message
    assert TOKEN not in response.text and WRONG not in response.text


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_every_engine_refuses_http_without_the_token_or_with_a_wrong_one(
    name: str, tmp_path: Path
) -> None:
    client = TestClient(engine_app(name, tmp_path), raise_server_exceptions=False)
    for method, path in ENGINES[name]:
        refused_over_http(client.request(method, path))
        refused_over_http(client.request(method, path, headers={INTERNAL_TOKEN_HEADER: WRONG}))
        # A prefix of the token, or the token in another header, is no token either.
        refused_over_http(client.request(method, path, headers={INTERNAL_TOKEN_HEADER: TOKEN[:-1]}))
        refused_over_http(client.request(method, path, headers={"Authorization": TOKEN}))
        # The right token gets past the guard (to the route, which answers for itself).
        passed = client.request(method, path, headers={INTERNAL_TOKEN_HEADER: TOKEN})
        assert passed.status_code != 401, passed.text
    # The refusals are counted by code, like every other error.
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert re.search(r'code="internal_token_required".*\} ([0-9.]+)', metrics.text)
    assert "voicemesh_errors_total" in metrics.text
    # /health is open: it answers for itself (no lifespan ran here, so not necessarily 200).
    health = client.get("/health")
    assert "internal_token_required" not in health.text


@pytest.mark.parametrize("name", sorted(SOCKETS))
def test_every_engine_socket_closes_4401_with_an_error_first(name: str, tmp_path: Path) -> None:
    client = TestClient(engine_app(name, tmp_path))
    for headers in ({}, {INTERNAL_TOKEN_HEADER: WRONG}):
        with client.websocket_connect(SOCKETS[name], headers=headers) as ws:
            message = ws.receive_json()
            assert message["type"] == "error" and message["fatal"] is True
            assert message["code"] == "internal_token_required"
            assert TOKEN not in message["message"]
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_text()
        assert closed.value.code == CLOSE_UNAUTHORIZED


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_without_a_token_set_an_engine_trusts_its_callers_as_before(
    name: str, tmp_path: Path
) -> None:
    client = TestClient(engine_app(name, tmp_path, token=None), raise_server_exceptions=False)
    method, path = ENGINES[name][0]
    assert "internal_token_required" not in client.request(method, path).text


def test_the_token_comes_from_a_file_and_a_placeholder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = tmp_path / "internal-token"
    secret.write_text(TOKEN + "\n", encoding="utf-8")
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN_FILE", str(secret))
    from tts_vits.app import TtsVitsSettings

    token = TtsVitsSettings(redis_url="").internal_token
    assert token is not None and token.get_secret_value() == TOKEN
    assert TOKEN not in repr(TtsVitsSettings(redis_url=""))
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN", TOKEN)
    with pytest.raises(ValueError, match="not both"):
        CommonSettings()
    monkeypatch.delenv("VOICEMESH_INTERNAL_TOKEN_FILE")
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN", "change-me")
    with pytest.raises(ValueError, match="fewer than 16"):
        CommonSettings()
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN", "change-me-internal-token")
    with pytest.raises(ValueError, match="placeholder"):
        CommonSettings()
    monkeypatch.delenv("VOICEMESH_INTERNAL_TOKEN")
    # A service's own setting is held to the same rule.
    with pytest.raises(ValueError, match="placeholder"):
        TtsVitsSettings(redis_url="", internal_token=SecretStr("replace-me-internal-token"))
    monkeypatch.setenv("VOICEMESH_INTERNAL_TOKEN_FILE", str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="internal_token_file"):
        CommonSettings()


# ----------------------------------------------------------- the real tts_clone


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module, emptied again afterwards."""
    with empty_redis_db(redis_server, TOKEN_TEST_DB) as url:
        yield url


@pytest.fixture(scope="module")
def clone_engine() -> WorldAdaptedVits:
    """The real CPU cloning engine (the clone service tests' own loader)."""
    from voicemesh.clone.vits import load_base_voice

    return WorldAdaptedVits(load_base_voice("en_US-joe-medium"), "en_US-joe-medium")


@pytest.fixture(scope="module")
def clone(
    redis_url: str,
    redis_server: RedisServer,
    tmp_path_factory: pytest.TempPathFactory,
    clone_engine: WorldAdaptedVits,
) -> Iterator[ThreadedServer]:
    """The real tts_clone on loopback, token required, registered in the module's Redis."""
    home = tmp_path_factory.mktemp("clone")
    port = free_port()
    settings = make_settings(
        redis_server,
        home,
        port=port,
        redis_url=redis_url,
        internal_token=SecretStr(TOKEN),
    )
    with ThreadedServer(create_clone_app(settings, cpu_engine=clone_engine), port) as server:
        yield server


def keyed_gateway(redis_url: str, token: str) -> GatewaySettings:
    """A gateway with keys A and B that sends ``token`` to the engines."""
    return GatewaySettings(
        redis_url=redis_url,
        registry_refresh_s=0.1,
        probe_interval_s=0,
        use_detector=False,
        wyoming_enabled=False,
        api_keys=[SecretStr(KEY_A), SecretStr(KEY_B)],
        requests_per_minute_per_key=10_000,
        internal_token=SecretStr(token),
    )


@pytest.fixture(scope="module")
def gateway(clone: ThreadedServer, redis_url: str) -> Iterator[TestClient]:
    """The keyed gateway with the mesh's token, once it routes to the clone replica."""
    with TestClient(create_gateway(keyed_gateway(redis_url, TOKEN))) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["replicas"].get("tts_clone") != 1:
            assert time.monotonic() < deadline, "the gateway never saw the clone replica"
            time.sleep(0.1)
        yield client


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_the_issues_attack_on_the_clone_service_is_refused(
    gateway: TestClient, clone: ThreadedServer
) -> None:
    made = gateway.post(
        "/v1/clone/voices",
        files={"audio": ("ref.wav", reference_bytes(), "audio/wav")},
        data={
            "name": "alice",
            "language": "en",
            "consent": "true",
            "prompt_text": "hello there this is my voice",
        },
        headers=bearer(KEY_A),
    )
    assert made.status_code == 201, made.text  # the gateway's calls carry the token
    voice = made.json()["voice_id"]
    assert gateway.get(f"/v1/clone/voices/{voice}", headers=bearer(KEY_A)).status_code == 200
    # Through the gateway, key B does not see A's profile.
    other = gateway.get(f"/v1/clone/voices/{voice}", headers=bearer(KEY_B))
    assert_error(other, 404, "voice_not_found")
    assert gateway.get("/v1/clone/voices", headers=bearer(KEY_B)).json()["voices"] == []

    # Straight to tts_clone's port, posing as the gateway with A's fingerprint (it is in
    # Redis key names): refused without the token and with a wrong one.
    posing = {OWNER_HEADER: f"key-{fingerprint(KEY_A)}"}
    with httpx.Client(base_url=clone.url, timeout=30, trust_env=False) as direct:
        for headers in (posing, {**posing, INTERNAL_TOKEN_HEADER: WRONG}):
            for path in (f"/v1/voices/{voice}", "/v1/voices"):
                refused_over_http(direct.get(path, headers=headers))
            refused_over_http(direct.delete(f"/v1/voices/{voice}", headers=headers))
        # Probes and Prometheus still reach it.
        assert direct.get("/health").status_code == 200
        assert direct.get("/metrics").status_code == 200
        # The same request with the token is the gateway's own, and is served: the header
        # alone is what the guard stands on.
        served = direct.get(f"/v1/voices/{voice}", headers={**posing, INTERNAL_TOKEN_HEADER: TOKEN})
        assert served.status_code == 200 and served.json()["voice_id"] == voice
    # Nothing was deleted by the refused calls.
    assert gateway.get(f"/v1/clone/voices/{voice}", headers=bearer(KEY_A)).status_code == 200


def test_a_gateway_with_another_meshs_token_fails_over_and_never_passes_the_401_on(
    clone: ThreadedServer, redis_url: str
) -> None:
    with TestClient(create_gateway(keyed_gateway(redis_url, WRONG))) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["replicas"].get("tts_clone") != 1:
            assert time.monotonic() < deadline, "the gateway never saw the clone replica"
            time.sleep(0.1)
        response = client.get("/v1/clone/voices", headers=bearer(KEY_A))
    message = assert_error(response, 503, "no_backend")
    assert "internal token" in message
    assert WRONG not in response.text and TOKEN not in response.text
