"""The admin status, the live status feed, the config reload and the benchmark routes
against the running mesh, by a client written from the issue's text (plain HTTP and a
plain WebSocket, no VoiceMesh code).

A gateway with an admin key and a client key joins the session mesh's Redis: behind it
the real CPU Whisper service, the speech detector and the VITS TTS service, each
reporting its own memory and CPU through the registry.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from tests.harness import clip_named
from tests.integration.conftest import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ADMIN_KEY = "admin-api-integration-admin"
CLIENT_KEY = "admin-api-integration-client"
JFK = clip_named("whisper-jfk.wav")


@pytest.fixture(scope="module")
def gateway_url(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway on the mesh's Redis, once it routes to STT."""
    with mesh.keyed_gateway(
        tmp_path_factory,
        "admin-api",
        client_key=CLIENT_KEY,
        admin_key=ADMIN_KEY,
        VOICEMESH_GATEWAY_STATUS_INTERVAL_S="0.5",
    ) as url:
        yield url


def call(url: str, method: str, path: str, key: str = ADMIN_KEY, **kwargs: Any) -> httpx.Response:
    return httpx.request(
        method, url + path, headers={"Authorization": f"Bearer {key}"}, timeout=60, **kwargs
    )


def refused(response: httpx.Response, status: int, code: str) -> str:
    """The message of a refusal in the one error shape."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["request_id"], error
    return str(error["message"])


def test_the_status_sums_the_mesh_and_counts_requests_by_kind(gateway_url: str) -> None:
    audio = JFK.path.read_bytes()
    files = {"audio": ("jfk.wav", audio, "audio/wav")}
    done = call(gateway_url, "POST", "/v1/asr/transcribe", CLIENT_KEY, files=files)
    assert done.status_code == 200, done.text
    status = call(gateway_url, "GET", "/v1/admin/status").json()
    for field in ("status", "version", "uptime_seconds", "memory_usage_mb", "cpu_usage_percent"):
        assert status[field] is not None, field
    assert status["status"] == "ok", status["status_reasons"]
    kinds = {part["kind"] for part in status["usage_by_replica"]}
    assert {"gateway", "stt_cpu_ws", "stt_tiny_ws", "tts_vits"} <= kinds
    total = sum(part["memory_mb"] for part in status["usage_by_replica"])
    assert status["memory_usage_mb"] == pytest.approx(total, abs=0.5)
    # Whisper base, tiny.en, a VITS voice and the gateway: far more than any one of them.
    largest = max(part["memory_mb"] for part in status["usage_by_replica"])
    assert status["memory_usage_mb"] > largest + 100
    assert status["gpu_memory_mb"] is None
    assert status["loaded_models"]["asr"] and status["loaded_models"]["tts"]
    stats = status["request_stats"]
    assert stats["asr_requests"] >= 1 and stats["total_requests"] >= stats["asr_requests"]
    assert 0 <= stats["error_rate_percent"] <= 100 and stats["avg_response_time_ms"] > 0
    assert refused(call(gateway_url, "GET", "/v1/admin/status", CLIENT_KEY), 403, "forbidden")
    assert refused(call(gateway_url, "GET", "/v1/admin/status", "wrong"), 401, "unauthorized")


def feed_messages(gateway_url: str, until: str, during: Any = None) -> list[dict[str, Any]]:
    """Messages of ``WS /v1/ws/status`` until one of type ``until`` (``during`` runs once
    the first status_update came)."""
    url = gateway_url.replace("http", "ws") + f"/v1/ws/status?api_key={ADMIN_KEY}"
    seen: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    with connect(url, open_timeout=10) as ws:
        while time.monotonic() < deadline:
            message = json.loads(ws.recv(timeout=10))
            seen.append(message)
            if message["type"] == "status_update" and during is not None:
                during()
                during = None
            if message["type"] == until:
                return seen
    pytest.fail(f"no {until} in {[m['type'] for m in seen]}")


def test_the_feed_speaks_type_timestamp_and_data(gateway_url: str) -> None:
    audio = JFK.path.read_bytes()

    def transcribe() -> None:
        files = {"audio": ("jfk.wav", audio, "audio/wav")}
        assert call(gateway_url, "POST", "/v1/asr/transcribe", CLIENT_KEY, files=files).is_success

    seen = feed_messages(gateway_url, "request_completed", during=transcribe)
    for message in seen:
        assert set(message) == {"type", "timestamp", "data"}, message
        stamp = datetime.fromisoformat(message["timestamp"].replace("Z", "+00:00"))
        assert abs(stamp.timestamp() - time.time()) < 120
    update = next(m["data"] for m in seen if m["type"] == "status_update")
    assert update["memory"] > 100 and update["cpu"] >= 0
    assert update["queue_length"] >= 0 and update["active_requests"] >= 0
    assert "loaded" in update["model_status"].values()
    completed = seen[-1]["data"]
    assert completed["type"] == "asr" and completed["status"] == "ok"
    assert completed["request_id"] and completed["processing_time_ms"] > 0


def test_config_reload_answers_what_changed_and_refuses_bad_input(gateway_url: str) -> None:
    answer = call(gateway_url, "POST", "/v1/admin/config/reload", json={})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["changed"] == {} and "max_sessions_per_key" in body["unchanged"]
    assert body["replicas"]["scope"] == "shared"
    unknown = call(gateway_url, "POST", "/v1/admin/config/reload", json={"everything": True})
    assert "everything" in refused(unknown, 422, "unknown_field")
    client = call(gateway_url, "POST", "/v1/admin/config/reload", CLIENT_KEY, json={})
    refused(client, 403, "forbidden")


def test_benchmark_routes_refuse_bad_input(gateway_url: str) -> None:
    for body, field in (({"clients": 0}, "clients"), ({"clips": 99}, "clips")):
        answer = call(gateway_url, "POST", "/v1/benchmark/run", json=body)
        assert field in refused(answer, 422, "validation_error")
    answer = call(gateway_url, "POST", "/v1/benchmark/run", json={"kind": "stt", "speed": 2})
    assert "speed" in refused(answer, 422, "unknown_field")
    refused(call(gateway_url, "GET", "/v1/benchmark/results/bm_nope"), 404, "benchmark_not_found")
    refused(call(gateway_url, "POST", "/v1/benchmark/run", CLIENT_KEY, json={}), 403, "forbidden")
