"""What the HTTP fuzz (tests/integration/test_fuzz_http.py) found, pinned one by one.

The gateway runs in-process (``TestClient``) with an API key; behind it the real
``tts_clone`` app (its CPU cloning engine on the bundled Piper voice) runs under uvicorn
on loopback and registers itself in a real Redis, as a replica does.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import RedisServer, ThreadedServer, assert_error, empty_redis_db, free_port
from voicemesh.clone.service import create_clone_app
from voicemesh.clone.settings import CloneSettings

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

FINDINGS_DB = 15
"""A Redis database of its own (see the other service modules for 6-13)."""
KEY = "fuzz-findings-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module."""
    with empty_redis_db(redis_server, FINDINGS_DB) as url:
        yield url


@pytest.fixture(scope="module")
def gateway(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The keyed gateway, once it routes to the real ``tts_clone`` replica."""
    home: Path = tmp_path_factory.mktemp("fuzz-findings-clone")
    clone = CloneSettings(
        port=free_port(),
        redis_url=redis_url,
        key_prefix=f"ff{free_port()}",
        voices_dir=home / "voices",
        cache_dir=home / "cache",
        heartbeat_interval_s=0.5,
    )
    settings = GatewaySettings(
        redis_url=redis_url, registry_refresh_s=0.1, use_detector=False, api_keys=[KEY]
    )
    with (
        ThreadedServer(create_clone_app(clone), clone.port),
        TestClient(create_app(settings)) as client,
    ):
        deadline = time.monotonic() + 60
        while not client.get("/health").json()["replicas"].get("tts_clone"):
            assert time.monotonic() < deadline, "the gateway never saw the tts_clone replica"
            time.sleep(0.1)
        yield client


@pytest.mark.parametrize(
    "voice_id",
    [
        "%C2%A7nNH%C2%AB~z%10",  # the fuzz's own find: a control character (was a 500)
        "v_%00",
        "%2E%2E",  # "..": put in the backend's URL it named another route
        "not-a-profile",
    ],
)
def test_a_voice_id_no_profile_can_have_is_a_404_not_a_crash(
    gateway: TestClient, voice_id: str
) -> None:
    for method in ("GET", "DELETE"):
        response = gateway.request(method, f"/v1/clone/voices/{voice_id}", headers=AUTH)
        assert "voice ids look like" in assert_error(response, 404, "voice_not_found")
        assert response.headers["x-request-id"] == response.json()["error"]["request_id"]


def test_a_well_formed_unknown_voice_id_still_reaches_tts_clone(gateway: TestClient) -> None:
    response = gateway.get("/v1/clone/voices/v_0123456789abcdef", headers=AUTH)
    message = assert_error(response, 404, "voice_not_found")
    # tts_clone's own answer, not the gateway's shape check.
    assert "voice ids look like" not in message


def test_an_unexpected_failure_still_names_its_request_id_in_the_header() -> None:
    from fastapi import FastAPI

    from voicemesh.http import install_http_basics
    from voicemesh.metrics import ServiceMetrics

    app = FastAPI()
    install_http_basics(app, ServiceMetrics("gateway"))

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("a bug")

    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.get("/boom", headers={"X-Request-ID": "rid-of-the-caller"})
    assert_error(response, 500, "internal_error")
    assert response.json()["error"]["request_id"] == "rid-of-the-caller"
    assert response.headers["x-request-id"] == "rid-of-the-caller"


def test_the_clone_synthesis_body_is_in_the_schema_and_checked(gateway: TestClient) -> None:
    # Undeclared, the schema fuzz could only ever send this route an empty body.
    operation = gateway.get("/openapi.json").json()["paths"]["/v1/clone/synthesize"]["post"]
    schema = operation["requestBody"]["content"]["application/json"]["schema"]
    assert schema["required"] == ["text", "voice_id"]
    assert schema["additionalProperties"] is False
    for body, where in (({"text": "Hi."}, "voice_id"), ({"text": "", "voice_id": "v_1"}, "text")):
        response = gateway.post("/v1/clone/synthesize", json=body, headers=AUTH)
        assert where in assert_error(response, 422, "validation_error")
