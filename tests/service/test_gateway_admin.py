"""Gateway admin API, live status, readiness and metrics: the real app in-process,
a real Redis. Replicas are registry entries written through ``RegistryClient`` (the
registry data a replica writes, not a stand-in service); where a request has to
reach one, its URL is a closed port, which is exactly a replica that just died.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from datetime import datetime
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

import voicemesh
from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import RedisServer, free_port
from voicemesh.registry import ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.service

# A database of its own on the shared test Redis: the integration mesh uses db 0 and
# must never see these replicas or this mode.
ADMIN_TEST_DB = 7
REFRESH_S = 0.1


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """A URL to an empty Redis database, emptied again afterwards."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{ADMIN_TEST_DB}"
    plain = redis.Redis.from_url(url, decode_responses=True)
    plain.flushdb()
    yield url
    plain.flushdb()
    plain.close()


def settings(redis_url: str, **overrides: Any) -> GatewaySettings:
    """Gateway settings on ``redis_url`` with a fast registry refresh."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "use_detector": False,
        "registry_refresh_s": REFRESH_S,
        **overrides,
    }
    return GatewaySettings(**values)


@pytest.fixture
def gateway(redis_url: str) -> Iterator[TestClient]:
    """A gateway on the test Redis, auth off."""
    with TestClient(create_app(settings(redis_url))) as client:
        yield client


def replica(
    instance_id: str,
    kind: str = "stt_cpu_ws",
    *,
    device: str = "cpu",
    sessions: int = 0,
    draining: bool = False,
    port: int | None = None,
) -> ReplicaInfo:
    """A registry entry; its URL is a port nothing listens on unless ``port`` says."""
    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind=kind,
        url=f"http://127.0.0.1:{port or free_port()}",
        device=device,
        model="base" if kind != "stt_tiny_ws" else "tiny.en",
        engine="faster-whisper",
        capabilities=["stream", "transcribe"],
        load=ReplicaLoad(active_sessions=sessions, max_sessions=8),
        draining=draining,
        started_at=now - 30,
        updated_at=now,
    )


def register(url: str, *replicas: ReplicaInfo) -> None:
    """Write replicas to the registry the way their heartbeat does."""
    from voicemesh.registry import RegistryClient

    async def write() -> None:
        client = RegistryClient(url, ttl_s=60.0)
        try:
            for info in replicas:
                await client.register(info)
        finally:
            await client.close()

    asyncio.run(write())


def deregister(url: str, info: ReplicaInfo) -> None:
    """Remove a replica from the registry (as it does on shutdown)."""
    from voicemesh.registry import RegistryClient

    async def remove() -> None:
        client = RegistryClient(url)
        try:
            await client.deregister(info.kind, info.instance_id)
        finally:
            await client.close()

    asyncio.run(remove())


def eventually(check: Callable[[], bool], timeout_s: float, step_s: float = 0.05) -> float:
    """Seconds until ``check()`` holds; fails the test after ``timeout_s``."""
    start = time.monotonic()
    while time.monotonic() - start < timeout_s:
        if check():
            return time.monotonic() - start
        time.sleep(step_s)
    pytest.fail(f"condition not met within {timeout_s} s")


def next_of_type(
    ws: WebSocketTestSession,
    kind: str,
    max_messages: int = 20,
    seen: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The next message of ``kind`` on the status feed (status updates in between)."""
    for _ in range(max_messages):
        message: dict[str, Any] = ws.receive_json()
        if seen is not None:
            seen.append(message)
        if message["type"] == kind:
            return message
    pytest.fail(f"no {kind} message among the next {max_messages}")


def unix_time(stamp: str) -> float:
    """An ISO 8601 UTC timestamp of the feed (``...Z``) as Unix time."""
    assert stamp.endswith("Z"), stamp
    return datetime.fromisoformat(stamp.removesuffix("Z") + "+00:00").timestamp()


def transcribe(client: TestClient) -> Any:
    """POST a small file to the OpenAI transcription route."""
    files = {"file": ("a.wav", b"RIFF0000WAVE", "audio/wav")}
    return client.post("/v1/audio/transcriptions", files=files)


# ---------------------------------------------------------------------- readiness


def test_ready_is_503_without_a_backend_then_200_once_one_registers(
    gateway: TestClient, redis_url: str
) -> None:
    response = gateway.get("/ready")
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "not_ready"
    assert error["reasons"] == ["no STT backend is routable"]
    assert error["redis"] == "connected"
    assert error["request_id"] == response.headers["x-request-id"]

    # A detector alone is not an STT backend: still 503 once the gateway has seen it.
    register(redis_url, replica("det-1", "stt_tiny_ws"))
    eventually(
        lambda: "stt_tiny_ws" in gateway.get("/v1/admin/services").json()["services"], timeout_s=10
    )
    assert gateway.get("/ready").status_code == 503

    cpu = replica("cpu-1")
    register(redis_url, cpu)
    eventually(lambda: gateway.get("/ready").status_code == 200, timeout_s=10)
    body = gateway.get("/ready").json()
    assert body["status"] == "ready"
    assert body["stt_route"] == [cpu.url]
    assert body["redis"] == "connected"


def test_ready_is_503_while_redis_state_is_unknown() -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    app = create_app(settings(unreachable, backend_urls=["http://127.0.0.1:9"]))
    with TestClient(app) as client:
        response = client.get("/ready")
        assert response.status_code == 503
        error = response.json()["error"]
        assert error["redis"] == "unreachable"
        assert len(error["reasons"]) == 1
        assert error["reasons"][0].startswith("Redis state is unknown")


def test_ready_without_redis_needs_only_a_backend() -> None:
    app = create_app(settings("", backend_urls=["http://127.0.0.1:9"]))
    with TestClient(app) as client:
        response = client.get("/ready")
        assert response.status_code == 200
        assert response.json()["redis"] == "disabled"


# ---------------------------------------------------------------------- mode


def test_post_mode_sets_redis_and_a_second_gateway_follows(
    gateway: TestClient, redis_url: str
) -> None:
    plain = redis.Redis.from_url(redis_url, decode_responses=True)
    with TestClient(create_app(settings(redis_url))) as other:
        assert other.get("/v1/admin/mode").json()["mode"] == "auto"

        response = gateway.post("/v1/admin/mode", json={"mode": "gpu"})

        assert response.status_code == 200, response.text
        assert response.json() == {"mode": "gpu", "previous": "auto", "scope": "shared"}
        assert plain.get("voicemesh:mode") == "gpu"
        assert gateway.get("/v1/admin/mode").json()["mode"] == "gpu"  # at once, here
        took = eventually(lambda: other.get("/v1/admin/mode").json()["mode"] == "gpu", timeout_s=10)
        print(f"second gateway followed the mode change in {took * 1000:.0f} ms")

        assert gateway.post("/v1/admin/mode", json={"mode": "cpu"}).json()["previous"] == "gpu"
        assert plain.get("voicemesh:mode") == "cpu"
        eventually(lambda: other.get("/v1/admin/mode").json()["mode"] == "cpu", timeout_s=10)
    plain.close()


@pytest.mark.parametrize("body", [{"mode": "turbo"}, {"mode": ""}, {}, {"mode": 1}])
def test_invalid_mode_is_a_422_and_changes_nothing(
    gateway: TestClient, redis_url: str, body: dict[str, Any]
) -> None:
    response = gateway.post("/v1/admin/mode", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "mode" in error["message"]
    assert redis.Redis.from_url(redis_url).get("voicemesh:mode") is None
    assert gateway.get("/v1/admin/mode").json()["mode"] == "auto"


def test_mode_change_while_redis_is_down_is_a_503() -> None:
    unreachable = f"redis://127.0.0.1:{free_port()}/0"
    with TestClient(create_app(settings(unreachable))) as client:
        response = client.post("/v1/admin/mode", json={"mode": "cpu"})
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "registry_unavailable"
        # Not applied here either: the replicas must not disagree.
        assert client.get("/v1/admin/mode").json() == {
            "mode": "auto",
            "default_mode": "auto",
            "redis": "unreachable",
        }


def test_mode_without_redis_is_local_to_the_replica() -> None:
    with TestClient(create_app(settings("", default_mode="cpu"))) as client:
        response = client.post("/v1/admin/mode", json={"mode": "gpu"})
        assert response.json() == {"mode": "gpu", "previous": "cpu", "scope": "local"}
        assert client.get("/v1/admin/mode").json()["mode"] == "gpu"
        assert client.get("/health").json()["mode"] == "gpu"


# ---------------------------------------------------------------------- status


def test_services_lists_replicas_and_the_route_order(gateway: TestClient, redis_url: str) -> None:
    cpu_busy = replica("cpu-busy", sessions=6)
    cpu_idle = replica("cpu-idle", sessions=1)
    gpu = replica("gpu-1", "stt_gpu_ws", device="cuda")
    draining = replica("cpu-draining", draining=True)
    detector = replica("det-1", "stt_tiny_ws")
    register(redis_url, cpu_busy, cpu_idle, gpu, draining, detector)
    eventually(lambda: len(gateway.get("/v1/admin/services").json()["services"]) == 3, 10)

    body = gateway.get("/v1/admin/services").json()

    services = body["services"]
    assert sorted(services) == ["stt_cpu_ws", "stt_gpu_ws", "stt_tiny_ws"]
    cpu = {r["instance_id"]: r for r in services["stt_cpu_ws"]}
    assert set(cpu) == {"cpu-busy", "cpu-idle", "cpu-draining"}
    assert cpu["cpu-busy"]["load"]["active_sessions"] == 6
    assert cpu["cpu-busy"]["load_share"] == pytest.approx(6 / 8)
    assert cpu["cpu-draining"]["draining"] is True
    assert cpu["cpu-draining"]["health"] == "draining"
    assert cpu["cpu-idle"]["health"] == "ok"
    assert cpu["cpu-idle"]["url"] == cpu_idle.url
    assert services["stt_gpu_ws"][0]["device"] == "cuda"
    assert services["stt_gpu_ws"][0]["model"] == "base"
    # auto: the idle GPU first, then CPU replicas least loaded first; never the draining one.
    assert body["stt_route"] == [gpu.url, cpu_idle.url, cpu_busy.url]
    assert body["mode"] == "auto"
    gateway.post("/v1/admin/mode", json={"mode": "cpu"})
    assert gateway.get("/v1/admin/services").json()["stt_route"] == [
        cpu_idle.url,
        cpu_busy.url,
        gpu.url,
    ]


def test_status_has_process_services_mode_and_request_stats(
    gateway: TestClient, redis_url: str
) -> None:
    dead = replica("cpu-dead")
    register(redis_url, dead)
    eventually(lambda: bool(gateway.get("/v1/admin/services").json()["stt_route"]), 10)
    # The only replica is down: the request fails over to nothing and is counted.
    assert transcribe(gateway).json()["error"]["code"] == "no_backend"

    status = gateway.get("/v1/admin/status").json()

    assert status["service"] == "gateway"
    assert status["version"] == voicemesh.__version__
    assert 0 <= status["uptime_s"] < 60
    process = status["process"]
    assert process["pid"] == os.getpid()  # TestClient runs the app in this process
    assert 1 < process["rss_mb"] < 64 * 1024
    assert process["cpu_percent"] >= 0
    assert process["threads"] >= 1
    assert status["mode"] == "auto"
    assert status["redis"] == "connected"
    assert status["auth"] == "off"
    assert status["sessions"] == {"active": 0, "max_total": 64, "max_per_key": 8}
    entry = status["services"]["stt_cpu_ws"][0]
    assert entry["url"] == dead.url
    assert entry["health"] == "failed"  # held out of routing after it refused
    assert entry["healthy"] is True  # ... though its registry entry still says healthy
    assert {"device", "model", "load", "draining"} <= set(entry)
    assert status["stt_route"] == []
    stats = status["requests"]["transcription"]
    assert stats["total"] == 1
    assert stats["errors"] == 1
    assert stats["error_rate"] == 1.0
    assert stats["latency_ms_avg"] is not None and stats["latency_ms_p95"] is not None


# ---------------------------------------------------------------------- live feed


@pytest.mark.timeout(60)
def test_status_feed_sends_one_update_at_once_then_one_per_interval(redis_url: str) -> None:
    # A long interval tells "at once" from "after one interval" with a generous margin.
    interval_s = 10.0
    app = create_app(settings(redis_url, status_interval_s=interval_s))
    with TestClient(app) as gateway:
        started = time.monotonic()
        with gateway.websocket_connect("/v1/ws/status") as ws:
            first = ws.receive_json()
            first_at = time.monotonic() - started
            second = next_of_type(ws, "status_update")
    assert first["type"] == "status_update"
    assert first_at < interval_s / 2, first_at
    apart = unix_time(second["timestamp"]) - unix_time(first["timestamp"])
    assert 0.7 * interval_s < apart < 2 * interval_s
    assert set(first) == {"type", "timestamp", "data"}
    data = first["data"]
    for key in ("memory", "cpu", "queue_length", "active_requests", "model_status"):
        assert key in data, key
    for key in ("uptime_s", "version", "process", "services", "mode", "requests", "sessions"):
        assert key in data, key


@pytest.mark.timeout(60)
def test_status_feed_forwards_mode_and_service_events(gateway: TestClient, redis_url: str) -> None:
    cpu = replica("cpu-live")
    with gateway.websocket_connect("/v1/ws/status") as ws:
        assert ws.receive_json()["type"] == "status_update"

        gateway.post("/v1/admin/mode", json={"mode": "gpu"})
        changed = next_of_type(ws, "mode_changed")["data"]
        assert (changed["mode"], changed["previous"], changed["source"]) == (
            "gpu",
            "auto",
            "admin_api",
        )
        assert changed["by"] == "anonymous"

        register(redis_url, cpu)
        up = next_of_type(ws, "service_up")["data"]
        assert (up["kind"], up["instance_id"], up["url"]) == ("stt_cpu_ws", "cpu-live", cpu.url)

        deregister(redis_url, cpu)
        down = next_of_type(ws, "service_down")
        assert set(down) == {"type", "timestamp", "data"}
        assert abs(unix_time(down["timestamp"]) - time.time()) < 30
        down = down["data"]
        assert (down["instance_id"], down["reason"]) == ("cpu-live", "left the registry")

        # A mode set behind this replica's back (another gateway) is an event too.
        redis.Redis.from_url(redis_url).set("voicemesh:mode", "cpu")
        changed = next_of_type(ws, "mode_changed")["data"]
        assert (changed["mode"], changed["previous"], changed["source"]) == (
            "cpu",
            "gpu",
            "registry",
        )


@pytest.mark.timeout(60)
def test_status_feed_forwards_failover_and_request_completed(
    gateway: TestClient, redis_url: str
) -> None:
    first, second = replica("cpu-a"), replica("cpu-b")
    register(redis_url, first, second)
    eventually(lambda: len(gateway.get("/v1/admin/services").json()["stt_route"]) == 2, 10)
    with gateway.websocket_connect("/v1/ws/status") as ws:
        assert ws.receive_json()["type"] == "status_update"
        # Both replicas are gone: the request moves from one to the other, then fails.
        assert transcribe(gateway).status_code == 503
        seen: list[dict[str, Any]] = []
        completed = next_of_type(ws, "request_completed", seen=seen)
    failovers = [m["data"] for m in seen if m["type"] == "failover"]
    assert len(failovers) == 1
    assert {failovers[0]["from"], failovers[0]["to"]} == {first.url, second.url}
    assert failovers[0]["reason"] == "backend_closed"
    assert set(completed) == {"type", "timestamp", "data"}
    data = completed["data"]
    assert data["request_id"] == failovers[0]["request_id"]
    assert data["type"] == "asr"
    assert data["model"] == "whisper-1"  # no replica served it: the model it asked for
    assert data["status"] == "error"
    assert data["http_status"] == 503
    assert data["kind"] == "transcription"
    assert 0 < data["processing_time_ms"] < 30_000
    text = gateway.get("/metrics").text
    assert 'voicemesh_gateway_failovers_total{reason="backend_closed"} 1.0' in text


# ---------------------------------------------------------------------- metrics


def test_metrics_has_the_gateway_series(gateway: TestClient) -> None:
    gateway.get("/v1/admin/mode")
    gateway.post("/v1/admin/mode", json={"mode": "nope"})
    gateway.get("/no/such/route")

    text = gateway.get("/metrics").text

    for name in (
        "voicemesh_active_sessions",
        "voicemesh_gateway_requests_total",
        "voicemesh_gateway_failovers_total",
        "voicemesh_gateway_backend_choice_total",
        "voicemesh_gateway_first_partial_latency_seconds_bucket",
        "voicemesh_gateway_final_latency_seconds_bucket",
    ):
        assert f"# TYPE {name.removesuffix('_bucket')}" in text or name in text, name
    assert 'voicemesh_gateway_requests_total{route="/v1/admin/mode",status="200"} 1.0' in text
    assert 'voicemesh_gateway_requests_total{route="/v1/admin/mode",status="422"} 1.0' in text
    assert 'voicemesh_gateway_requests_total{route="unmatched",status="404"} 1.0' in text
    assert "voicemesh_gateway_final_latency_seconds_count 0.0" in text
