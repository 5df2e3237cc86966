"""The specification's status fields, the status feed's envelope and the configuration
reload, on the real gateway app in-process with a real Redis (``test_gateway_admin``'s
fixtures and registry helpers). Settings a reload reads come from the environment, set
with ``monkeypatch`` exactly as an operator sets them before asking for the reload.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import redis
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app
from gateway.settings import GatewaySettings, load_settings
from tests.harness import free_port
from tests.service.test_gateway_admin import (
    REFRESH_S,
    eventually,
    next_of_type,
    redis_url,
    register,
    replica,
    unix_time,
)
from tests.service.test_gateway_admin import settings as admin_settings
from voicemesh.registry import RegistryClient, RegistryHeartbeat, ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.service

__all__ = ["redis_url"]  # the fixture: an empty Redis database for each test
ENV = "VOICEMESH_GATEWAY_"


def settings(redis_url: str, **overrides: Any) -> GatewaySettings:
    """``test_gateway_admin``'s settings with Wyoming off: several gateways share this host."""
    return admin_settings(redis_url, wyoming_enabled=False, **overrides)


@pytest.fixture
def gateway(redis_url: str) -> Iterator[TestClient]:
    """A gateway on the test Redis, auth off."""
    with TestClient(create_app(settings(redis_url))) as client:
        yield client


def with_usage(info: ReplicaInfo, **usage: Any) -> ReplicaInfo:
    """``info`` with load figures (as its heartbeat stamps them)."""
    return info.model_copy(update={"load": info.load.model_copy(update=usage)})


def tts_replica(instance_id: str, voice: str) -> ReplicaInfo:
    """A ``tts_vits`` registry entry holding ``voice``."""
    info = replica(instance_id, "tts_vits")
    return info.model_copy(update={"model": voice, "engine": "piper", "capabilities": []})


# ---------------------------------------------------------------------- status


def test_status_sums_usage_over_the_gateway_and_every_replica(
    gateway: TestClient, redis_url: str
) -> None:
    before = gateway.get("/v1/admin/status").json()
    assert before["status"] == "degraded"
    assert before["status_reasons"] == ["no STT backend is routable"]
    assert before["gpu_memory_mb"] is None  # no part reports GPU memory

    cpu = with_usage(replica("cpu-1"), memory_mb=300.5, cpu_percent=50.0, queue=2)
    gpu = with_usage(
        replica("gpu-1", "stt_gpu_ws", device="cuda"),
        memory_mb=200.0,
        cpu_percent=25.5,
        gpu_memory_mb=1024.0,
        queue=3,
    )
    tts = with_usage(tts_replica("tts-1", "en_US-joe-medium"), memory_mb=100.0, cpu_percent=1.0)
    register(redis_url, cpu, gpu, tts)
    eventually(lambda: gateway.get("/v1/admin/status").json()["status"] == "ok", 10)

    status = gateway.get("/v1/admin/status").json()

    parts = {p["instance_id"]: p for p in status["usage_by_replica"]}
    own = parts.pop(status["instance_id"])
    assert own["kind"] == "gateway"
    assert own["memory_mb"] == status["process"]["rss_mb"]
    assert {i: (p["memory_mb"], p["cpu_percent"]) for i, p in parts.items()} == {
        "cpu-1": (300.5, 50.0),
        "gpu-1": (200.0, 25.5),
        "tts-1": (100.0, 1.0),
    }
    assert status["memory_usage_mb"] == pytest.approx(own["memory_mb"] + 600.5, abs=0.11)
    assert status["cpu_usage_percent"] == pytest.approx(own["cpu_percent"] + 76.5, abs=0.11)
    assert status["gpu_memory_mb"] == 1024.0
    assert status["status_reasons"] == []
    assert status["version"] and 0 <= status["uptime_seconds"] < 60
    assert status["loaded_models"] == {"asr": ["base"], "tts": ["en_US-joe-medium"]}
    assert status["model_status"] == {"base": "loaded", "en_US-joe-medium": "loaded"}
    assert status["queue_length"] == 5
    assert status["active_requests"] == 1  # this very request
    stats = status["request_stats"]
    assert set(stats) >= {
        "total_requests",
        "asr_requests",
        "tts_requests",
        "avg_response_time_ms",
        "error_rate_percent",
    }

    # The feed carries the same figures under the specification's names.
    with gateway.websocket_connect("/v1/ws/status") as ws:
        update = ws.receive_json()
    assert update["type"] == "status_update" and set(update) == {"type", "timestamp", "data"}
    assert abs(unix_time(update["timestamp"]) - time.time()) < 30
    data = update["data"]
    assert data["memory"] == data["memory_usage_mb"] and data["memory"] > 600.5
    assert data["cpu"] == data["cpu_usage_percent"] >= 76.5
    assert data["queue_length"] == 5
    assert data["active_requests"] == 0  # no HTTP request in flight, no session
    assert data["model_status"] == {"base": "loaded", "en_US-joe-medium": "loaded"}


def test_request_stats_classify_asr_and_count_errors(gateway: TestClient, redis_url: str) -> None:
    register(redis_url, replica("cpu-dead"))
    eventually(lambda: gateway.get("/v1/admin/status").json()["status"] == "ok", 10)
    files = {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")}
    for _ in range(2):
        assert gateway.post("/v1/audio/transcriptions", files=files).status_code == 503

    stats = gateway.get("/v1/admin/status").json()["request_stats"]

    assert (stats["total_requests"], stats["asr_requests"], stats["tts_requests"]) == (2, 2, 0)
    assert stats["error_rate_percent"] == 100.0
    assert stats["avg_response_time_ms"] > 0


def test_a_heartbeat_registers_its_process_usage(gateway: TestClient, redis_url: str) -> None:
    now = time.time()
    info = ReplicaInfo(
        instance_id="beating",
        kind="stt_cpu_ws",
        url="http://127.0.0.1:9",
        model="base",
        load=ReplicaLoad(),
        started_at=now,
        updated_at=now,
    )

    async def beat() -> ReplicaInfo:
        client = RegistryClient(redis_url, ttl_s=30.0)
        heartbeat = RegistryHeartbeat(client, lambda: info, interval_s=10.0)
        try:
            await heartbeat.start()
            await heartbeat.stop(deregister=False)
            return (await client.snapshot("stt_cpu_ws"))[0]
        finally:
            await client.close()

    stored = asyncio.run(beat())

    rss_mb = psutil.Process(os.getpid()).memory_info().rss / 1024 / 1024
    assert stored.load.memory_mb == pytest.approx(rss_mb, rel=0.2)
    assert stored.load.cpu_percent is not None and stored.load.cpu_percent >= 0
    assert stored.load.gpu_memory_mb is None  # a CPU replica
    eventually(
        lambda: any(
            p["instance_id"] == "beating" and p["memory_mb"] == stored.load.memory_mb
            for p in gateway.get("/v1/admin/status").json()["usage_by_replica"]
        ),
        10,
    )


# ---------------------------------------------------------------------- reload


def reload(client: TestClient, **kwargs: Any) -> Any:
    return client.post("/v1/admin/config/reload", **kwargs)


def test_reload_applies_a_new_session_limit_on_every_gateway(
    gateway: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with TestClient(create_app(settings(redis_url))) as other:
        assert other.get("/v1/admin/status").json()["sessions"]["max_total"] == 64
        monkeypatch.setenv(f"{ENV}MAX_SESSIONS_TOTAL", "1")
        with gateway.websocket_connect("/v1/ws/status") as feed:
            feed.receive_json()

            response = reload(gateway)

            event = next_of_type(feed, "config_reloaded")["data"]
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["changed"] == {"max_sessions_total": {"old": 64, "new": 1}}
        assert "max_sessions_per_key" in body["unchanged"]
        assert body["reloaded_by"] == "anonymous"
        # Set in the test's settings, not in the environment: a restart would differ.
        assert body["requires_restart"]["registry_refresh_s"] == {
            "running": REFRESH_S,
            "configured": 1.0,
        }
        replicas = body["replicas"]
        assert replicas["scope"] == "shared" and replicas["generation"] == 1
        gateways = {gateway.app.state.gateway.settings.instance_id}
        gateways.add(other.app.state.gateway.settings.instance_id)
        assert set(replicas["applied"]) == gateways and replicas["pending"] == []
        assert event["changed"] == body["changed"] and event["source"] == "admin_api"
        assert event["generation"] == 1
        assert gateway.get("/v1/admin/status").json()["sessions"]["max_total"] == 1
        assert other.get("/v1/admin/status").json()["sessions"]["max_total"] == 1

        # One realtime session holds the only slot: a new stream is refused as busy.
        with gateway.websocket_connect("/v1/realtime") as held:
            assert held.receive_json()["type"] == "session.created"
            with gateway.websocket_connect("/ws/transcribe") as refused:
                message = refused.receive_json()
                with pytest.raises(WebSocketDisconnect) as closed:
                    refused.receive_text()
        assert message["code"] == "busy", message
        assert "1 concurrent sessions" in message["message"]
        assert closed.value.code == 1013


def test_reload_swaps_the_keys_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old_file, new_file = tmp_path / "old.keys", tmp_path / "new.keys"
    old_file.write_text("old-key\n", encoding="utf-8")
    new_file.write_text("# rotated\nnew-key\n", encoding="utf-8")
    app = create_app(settings("", api_keys_file=old_file))
    with TestClient(app) as client:
        old, new = {"X-API-Key": "old-key"}, {"X-API-Key": "new-key"}
        assert client.get("/v1/admin/mode", headers=new).status_code == 401
        monkeypatch.setenv(f"{ENV}API_KEYS_FILE", str(new_file))

        response = reload(client, headers=old)

        assert response.status_code == 200, response.text
        body = response.json()
        assert body["changed"]["api_keys_file"] == {"old": str(old_file), "new": str(new_file)}
        assert body["replicas"] == {"scope": "local"}
        assert "new-key" not in response.text and "old-key" not in response.text
        assert client.get("/v1/admin/mode", headers=old).status_code == 401
        assert client.get("/v1/admin/mode", headers=new).status_code == 200


@pytest.mark.parametrize("problem", ["missing", "not_utf8"])
def test_a_bad_keys_file_is_a_422_and_nothing_changes(
    gateway: TestClient,
    redis_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    problem: str,
) -> None:
    path = tmp_path / "keys"
    if problem == "not_utf8":
        path.write_bytes(b"\xff\xfe\x00key\n")
    monkeypatch.setenv(f"{ENV}API_KEYS_FILE", str(path))
    monkeypatch.setenv(f"{ENV}MAX_SESSIONS_TOTAL", "1")

    response = reload(gateway)

    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "config_invalid"
    assert "API keys cannot be read" in error["message"] and str(path) in error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    status = gateway.get("/v1/admin/status").json()
    assert status["sessions"]["max_total"] == 64 and status["auth"] == "off"
    assert redis.Redis.from_url(redis_url).get("voicemesh:config:generation") is None


def test_settings_that_fail_validation_are_a_422_naming_the_field(
    gateway: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{ENV}MAX_SESSIONS_PER_KEY", "0")
    response = reload(gateway)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "config_invalid" and "max_sessions_per_key" in error["message"]
    assert gateway.get("/v1/admin/status").json()["sessions"]["max_per_key"] == 8


def test_dry_run_says_what_would_change_and_applies_nothing(
    gateway: TestClient, redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{ENV}MAX_SESSIONS_PER_KEY", "2")
    body = reload(gateway, json={"dry_run": True}).json()
    assert body["changed"] == {"max_sessions_per_key": {"old": 8, "new": 2}}
    assert body["dry_run"] is True and body["replicas"] == {"scope": "none"}
    assert gateway.get("/v1/admin/status").json()["sessions"]["max_per_key"] == 8
    assert redis.Redis.from_url(redis_url).get("voicemesh:config:generation") is None


def test_an_unknown_body_field_is_a_422(gateway: TestClient) -> None:
    response = reload(gateway, json={"dry_run": True, "force": True})
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "unknown_field" and "force" in error["message"]


def test_reload_needs_the_admin_key(monkeypatch: pytest.MonkeyPatch) -> None:
    app = create_app(settings("", api_keys=["client-key"], admin_key="admin-key"))
    with TestClient(app) as client:
        monkeypatch.setenv(f"{ENV}ADMIN_KEY", "admin-key")
        monkeypatch.setenv(f"{ENV}API_KEYS", '["client-key"]')
        refused = reload(client, headers={"X-API-Key": "client-key"})
        assert refused.status_code == 403
        allowed = reload(client, headers={"X-API-Key": "admin-key"})
        assert allowed.status_code == 200, allowed.text
        assert allowed.json()["changed"] == {}
        assert allowed.json()["reloaded_by"].startswith("admin-")


def test_reload_reads_the_edited_config_file_and_the_environment_wins(
    redis_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "gateway.env"
    config.write_text(f"{ENV}MAX_SESSIONS_PER_KEY=4\n{ENV}DEFAULT_MODE=cpu\n", encoding="utf-8")
    monkeypatch.setenv(f"{ENV}REQUESTS_PER_MINUTE_TOTAL", "900")
    started = load_settings(
        redis_url=redis_url, registry_refresh_s=REFRESH_S, wyoming_enabled=False, config_file=config
    )
    assert (started.max_sessions_per_key, started.default_mode) == (4, "cpu")
    with TestClient(create_app(started)) as client:
        assert client.get("/v1/admin/mode").json()["mode"] == "cpu"  # Redis holds no mode
        config.write_text(
            f"{ENV}MAX_SESSIONS_PER_KEY=2\n{ENV}DEFAULT_MODE=gpu\n"
            f"{ENV}REQUESTS_PER_MINUTE_TOTAL=5\n",
            encoding="utf-8",
        )

        body = reload(client).json()

        assert body["changed"] == {
            "default_mode": {"old": "cpu", "new": "gpu"},
            "max_sessions_per_key": {"old": 4, "new": 2},
        }  # the environment's 900 requests per minute wins over the file's 5
        assert "requests_per_minute_total" in body["unchanged"]
        eventually(lambda: client.get("/v1/admin/mode").json()["mode"] == "gpu", 10)
        assert client.get("/v1/admin/status").json()["sessions"]["max_per_key"] == 2

        config.unlink()
        gone = reload(client)
        assert gone.status_code == 422 and gone.json()["error"]["code"] == "config_invalid"
        assert str(config) in gone.json()["error"]["message"]


def test_requires_restart_never_shows_a_redis_password(
    gateway: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(f"{ENV}REDIS_URL", "redis://:s3cret-pass@10.0.0.9:6379/0")
    body = reload(gateway, json={"dry_run": True}).json()
    assert body["requires_restart"]["redis_url"]["configured"] == "redis://***@10.0.0.9:6379/0"
    assert "s3cret-pass" not in json.dumps(body)


def test_reload_while_redis_is_down_is_a_503_and_changes_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(settings(unreachable))) as client:
        monkeypatch.setenv(f"{ENV}MAX_SESSIONS_TOTAL", "1")
        response = reload(client)
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "registry_unavailable"
        assert client.get("/v1/admin/status").json()["sessions"]["max_total"] == 64
