"""The benchmark service (``/v1/benchmark/...``): the real gateway app in-process, a real
Redis, the real ``tts_vits`` app with the bundled Piper voice on loopback.

The STT replica is a fake (:class:`FakeScriptedStt`): a real Whisper engine's transcript
is not known in advance, and the point here is that the numbers the benchmark reports
are the right ones for what the mesh answered. The fake speaks the STT service's side
of ``/ws/transcribe`` (``ready``, a ``partial`` once audio comes, a ``final`` on ``stop``)
and always transcribes :data:`FAKE_TEXT`, so every clip's WER is known: 0 for the clip
whose reference that is, and jiwer's figure for the others. The run against real
models is ``tests/integration/test_benchmark.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import jiwer
import numpy as np
import pytest
import redis
from fastapi.testclient import TestClient
from websockets.asyncio.server import ServerConnection

from gateway.app import create_app
from gateway.benchmark_runner import TTS_SENTENCES
from gateway.benchmark_store import BenchmarkRun, RedisRunStore
from gateway.settings import GatewaySettings
from tests.harness import (
    RedisServer,
    ThreadedServer,
    WebSocketServerThread,
    assert_error,
    empty_redis_db,
    fake_stt_entry,
    normalize,
    register_replicas,
    tts_vits_server,
)
from voicemesh.assets.speech_clips import bundled_clips
from voicemesh.protocol import SAMPLE_RATE, FinalMessage, PartialMessage
from voicemesh.registry import ReplicaInfo

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

BENCH_TEST_DB = 13
"""A Redis database of its own (stall 6, admin 7, ASR 8, TTS 9)."""
ADMIN_KEY = "bench-admin-key"
CLIENT_KEY = "bench-client-key"
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
CLIPS = bundled_clips()
FAKE_TEXT = CLIPS[0].text
"""What the fake STT replica hears in every clip: the first clip's reference."""
PARTIAL_AFTER_S = 0.3


class FakeScriptedStt(WebSocketServerThread):
    """A fake STT replica on its own thread: one partial after 0.3 s of audio, and
    :data:`FAKE_TEXT` as the final on ``stop`` (or ``flush``), whatever it heard."""

    def __init__(self) -> None:
        super().__init__(self._session, "fake-stt")

    def replica(self) -> ReplicaInfo:
        """Its registry entry, as a replica's heartbeat writes it."""
        return fake_stt_entry("scripted-stt-fake", self.url, max_sessions=64)

    async def _session(self, ws: ServerConnection) -> None:
        ready = {"type": "ready", "engine": "fake", "device": "cpu", "model": "fake"}
        await ws.send(json.dumps(ready))
        heard_s = 0.0
        partial_sent = False
        with contextlib.suppress(Exception):
            async for message in ws:
                if isinstance(message, bytes):
                    heard_s += len(message) / 2 / SAMPLE_RATE
                    if heard_s >= PARTIAL_AFTER_S and not partial_sent:
                        partial_sent = True
                        await ws.send(_partial(heard_s))
                    continue
                kind = json.loads(message).get("type")
                if kind in ("stop", "flush"):
                    await ws.send(_final(heard_s, kind))
                if kind == "stop":
                    await ws.close()


def _partial(end: float) -> str:
    return PartialMessage(utterance_id=1, text="he was", start=0.0, end=round(end, 3)).dumps()


def _final(end: float, reason: str) -> str:
    final = FinalMessage(
        utterance_id=1,
        text=FAKE_TEXT,
        start=0.0,
        end=round(end, 3),
        engine="fake",
        device="cpu",
        model="fake",
        latency_ms=1.0,
        reason="stop" if reason == "stop" else "flush",
    )
    return final.dumps()


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module, emptied again afterwards."""
    with empty_redis_db(redis_server, BENCH_TEST_DB) as url:
        yield url


@pytest.fixture(scope="module")
def fake_stt(redis_url: str) -> Iterator[FakeScriptedStt]:
    """The fake STT replica, listening and registered."""
    with FakeScriptedStt() as fake:
        register_replicas(redis_url, fake.replica())
        yield fake


@pytest.fixture(scope="module")
def tts(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """The real tts_vits app on loopback, registered in Redis."""
    with tts_vits_server(redis_url, tmp_path_factory.mktemp("tts-models")) as server:
        yield server


def gateway_settings(redis_url: str | None, **overrides: Any) -> GatewaySettings:
    """A keyed gateway (an admin key and a client key) that routes without probing."""
    values: dict[str, Any] = {
        "redis_url": redis_url or "",
        "registry_refresh_s": 0.1,
        "probe_interval_s": 0,
        "use_detector": False,
        "api_keys": [CLIENT_KEY],
        "admin_key": ADMIN_KEY,
        "requests_per_minute_per_key": 10_000,
        "wyoming_enabled": False,
        **overrides,
    }
    return GatewaySettings(**values)


@pytest.fixture(scope="module")
def gateway(redis_url: str, fake_stt: FakeScriptedStt, tts: ThreadedServer) -> Iterator[TestClient]:
    """The gateway, once it routes to the fake STT replica and the TTS replica."""
    with TestClient(create_app(gateway_settings(redis_url))) as client:
        deadline = time.monotonic() + 30
        while True:
            replicas = client.get("/health").json()["replicas"]
            if replicas.get("tts_vits") == 1 and replicas.get("stt_cpu_ws") == 1:
                break
            assert time.monotonic() < deadline, f"the gateway never saw the replicas: {replicas}"
            time.sleep(0.1)
        yield client


@pytest.fixture(scope="module")
def second_gateway(gateway: TestClient, redis_url: str) -> Iterator[TestClient]:
    """Another gateway replica on the same Redis."""
    with TestClient(create_app(gateway_settings(redis_url))) as client:
        yield client


def wait_until_done(gateway: TestClient, run_id: str, timeout_s: float = 120) -> dict[str, Any]:
    """The run's answer once it is no longer queued or running."""
    deadline = time.monotonic() + timeout_s
    while True:
        response = gateway.get(f"/v1/benchmark/results/{run_id}", headers=ADMIN)
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        if body["status"] not in ("queued", "running"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def start(gateway: TestClient, **body: Any) -> dict[str, Any]:
    """Start a run; its 202 answer."""
    response = gateway.post("/v1/benchmark/run", json=body, headers=ADMIN)
    assert response.status_code == 202, response.text
    answer: dict[str, Any] = response.json()
    assert response.headers["location"] == answer["results_url"]
    return answer


def expected_wer(reference: str) -> float:
    """What the fake's transcript scores against ``reference``, by jiwer, in percent."""
    return 100 * float(jiwer.wer(" ".join(normalize(reference)), " ".join(normalize(FAKE_TEXT))))


def test_a_run_streams_and_speaks_and_its_summary_matches_its_rows(
    gateway: TestClient, fake_stt: FakeScriptedStt
) -> None:
    with gateway.websocket_connect(f"/v1/ws/status?api_key={ADMIN_KEY}") as feed:
        answer = start(gateway, kind="both", clients=2, clips=2, real_time=False)
        run_id = answer["id"]
        assert run_id.startswith("bm_")
        assert answer["status"] in ("queued", "running")
        assert (answer["kind"], answer["clients"], answer["clips"]) == ("both", 2, 2)
        assert answer["results_url"] == f"/v1/benchmark/results/{run_id}"
        assert answer["store"] == "redis"
        total = 2 * 2 + 2 * len(TTS_SENTENCES)

        early = gateway.get(answer["results_url"], headers=ADMIN).json()
        assert early["status"] in ("queued", "running"), early
        assert early["progress"]["total"] == total
        assert early["progress"]["done"] < total

        progress: list[int] = []
        while True:
            message = feed.receive_json()
            event = message["data"]  # the feed's {type, timestamp, data} envelope
            if event.get("id") != run_id:
                continue
            if message["type"] == "benchmark_progress":
                progress.append(event["done"])
                assert event["total"] == total
            if message["type"] == "benchmark_completed":
                completed = event
                break
    assert progress == list(range(total + 1)), progress
    assert completed["status"] == "completed"

    result = wait_until_done(gateway, run_id)
    assert result["status"] == "completed"
    assert result["progress"] == {"done": total, "total": total}
    assert result["finished_at"] >= result["started_at"]
    assert result["errors"] == []
    assert result["summary"] == completed["summary"]

    stt = result["stt"]
    assert sorted((r["client"], r["clip"]) for r in stt) == sorted(
        (c, clip.name) for c in (0, 1) for clip in CLIPS[:2]
    )
    for row in stt:
        reference = next(c.text for c in CLIPS if c.name == row["clip"])
        assert row["error"] is None
        assert row["transcript"] == FAKE_TEXT
        assert row["wer"] == pytest.approx(expected_wer(reference), abs=0.01)
        assert row["first_partial_ms"] > 0 and row["final_ms"] >= 0 and row["ready_ms"] > 0
        assert row["backend"] == fake_stt.url
    assert {r["wer"] for r in stt if r["clip"] == CLIPS[0].name} == {0.0}
    assert all(r["wer"] > 0 for r in stt if r["clip"] == CLIPS[1].name)

    tts = result["tts"]
    assert sorted((r["client"], r["sentence"]) for r in tts) == sorted(
        (c, s) for c in (0, 1) for s in TTS_SENTENCES
    )
    for row in tts:
        assert row["error"] is None
        assert 0 < row["first_chunk_ms"] <= row["total_ms"]
        assert row["audio_s"] > 0.5
        assert row["rtf"] == pytest.approx(row["total_ms"] / 1000 / row["audio_s"], rel=0.01)

    def spread(values: list[float]) -> dict[str, float]:
        return {
            "median": round(float(np.median(values)), 1),
            "p95": round(float(np.percentile(values, 95)), 1),
        }

    summary = result["summary"]
    assert summary["stt"]["requests"] == 4 and summary["stt"]["errors"] == 0
    assert summary["stt"]["first_partial_ms"] == spread([r["first_partial_ms"] for r in stt])
    assert summary["stt"]["final_ms"] == spread([r["final_ms"] for r in stt])
    assert summary["stt"]["wer_mean"] == pytest.approx(np.mean([r["wer"] for r in stt]), abs=0.01)
    assert summary["tts"]["requests"] == 6 and summary["tts"]["errors"] == 0
    assert summary["tts"]["first_chunk_ms"] == spread([r["first_chunk_ms"] for r in tts])
    assert summary["tts"]["rtf_median"] == pytest.approx(
        np.median([r["rtf"] for r in tts]), abs=1e-4
    )


def test_one_run_at_a_time_across_gateways_and_results_from_either(
    gateway: TestClient, second_gateway: TestClient
) -> None:
    answer = start(gateway, kind="stt", clients=1, clips=1, real_time=True)
    run_id = answer["id"]

    for client in (gateway, second_gateway):
        refused = client.post("/v1/benchmark/run", json={"kind": "tts"}, headers=ADMIN)
        message = assert_error(refused, 409, "benchmark_running")
        assert run_id in message
        error = refused.json()["error"]
        assert error["run_id"] == run_id
        assert error["retry_after"] >= 1
        assert refused.headers["retry-after"] == str(error["retry_after"])

    result = wait_until_done(gateway, run_id)
    assert result["status"] == "completed", result
    # Real-time pace: the final cannot come before the clip was all spoken.
    assert result["finished_at"] - result["started_at"] >= CLIPS[0].duration_s
    assert result["stt"][0]["wer"] == 0.0

    elsewhere = second_gateway.get(f"/v1/benchmark/results/{run_id}", headers=ADMIN)
    assert elsewhere.status_code == 200
    assert elsewhere.json() == result

    listing = second_gateway.get("/v1/benchmark/results", headers=ADMIN).json()
    assert listing["store"] == "redis"
    assert listing["runs"][0]["id"] == run_id
    started = [run["started_at"] for run in listing["runs"]]
    assert started == sorted(started, reverse=True)
    assert set(listing["runs"][0]) == {
        "id", "status", "kind", "started_at", "finished_at", "progress"
    }  # fmt: skip

    # The lock went with the run: the next one starts.
    again = start(second_gateway, kind="stt", clips=1, real_time=False)
    assert wait_until_done(second_gateway, again["id"])["status"] == "completed"


@pytest.mark.parametrize(
    ("body", "code", "named"),
    [
        ({"clients": 5}, "validation_error", "4"),
        ({"clients": 0}, "validation_error", "1"),
        ({"clips": len(CLIPS) + 1}, "validation_error", str(len(CLIPS))),
        ({"kind": "video"}, "validation_error", "both"),
        ({"kind": "stt", "concurrency": 2}, "unknown_field", "concurrency"),
    ],
)
def test_bad_bodies_are_refused_naming_the_limit(
    gateway: TestClient, body: dict[str, Any], code: str, named: str
) -> None:
    response = gateway.post("/v1/benchmark/run", json=body, headers=ADMIN)
    message = assert_error(response, 422, code)
    assert named in message, message


def test_an_unknown_run_is_a_404(gateway: TestClient) -> None:
    response = gateway.get("/v1/benchmark/results/bm_000000000000", headers=ADMIN)
    assert "bm_000000000000" in assert_error(response, 404, "benchmark_not_found")


def test_only_the_admin_key_runs_or_reads_benchmarks(gateway: TestClient) -> None:
    client = {"Authorization": f"Bearer {CLIENT_KEY}"}
    assert_error(gateway.post("/v1/benchmark/run", json={}, headers=client), 403, "forbidden")
    assert_error(gateway.get("/v1/benchmark/results", headers=client), 403, "forbidden")
    assert_error(gateway.post("/v1/benchmark/run", json={}), 401, "unauthorized")


def test_a_run_whose_runner_went_silent_is_reported_failed(
    gateway: TestClient, redis_url: str
) -> None:
    now = time.time()
    orphan = BenchmarkRun(
        id="bm_orphan00000",
        status="running",
        kind="stt",
        clients=1,
        clips=1,
        real_time=True,
        gateway="gone-gateway",
        started_at=now - 300,
        heartbeat_at=now - 200,
        estimated_s=5,
    )

    async def write() -> None:
        store = RedisRunStore(redis_url, prefix="voicemesh", keep=20, ttl_s=600)
        try:
            await store.save(orphan)
        finally:
            await store.close()

    asyncio.run(write())
    body = gateway.get(f"/v1/benchmark/results/{orphan.id}", headers=ADMIN).json()
    assert body["status"] == "failed"
    assert body["error"]["code"] == "runner_stopped"
    assert "gone-gateway" in body["error"]["message"]
    listed = gateway.get("/v1/benchmark/results", headers=ADMIN).json()["runs"]
    assert {r["id"]: r["status"] for r in listed}[orphan.id] == "failed"


def test_without_redis_runs_are_kept_in_memory_and_say_so(fake_stt: FakeScriptedStt) -> None:
    settings = gateway_settings(None, backend_urls=[fake_stt.url])
    with TestClient(create_app(settings)) as alone:
        answer = start(alone, kind="stt", clips=1, real_time=False)
        assert answer["store"] == "memory"
        result = wait_until_done(alone, answer["id"])
        assert result["store"] == "memory"
        assert result["status"] == "completed"
        assert result["stt"][0]["wer"] == 0.0
        listing = alone.get("/v1/benchmark/results", headers=ADMIN).json()
        assert listing == {"runs": [{k: result[k] for k in listing["runs"][0]}], "store": "memory"}


def test_the_store_keeps_the_newest_runs_only_and_expires_them(redis_url: str) -> None:
    def run(n: int) -> BenchmarkRun:
        return BenchmarkRun(
            id=f"bm_keep{n}",
            kind="stt",
            clients=1,
            clips=1,
            real_time=False,
            gateway="g",
            started_at=1000.0 + n,
            heartbeat_at=1000.0 + n,
            estimated_s=1,
        )

    async def check() -> None:
        store = RedisRunStore(redis_url, prefix="keep-test", keep=2, ttl_s=30)
        try:
            for n in range(3):
                await store.save(run(n))
            assert [r.id for r in await store.recent()] == ["bm_keep2", "bm_keep1"]
            assert await store.get("bm_keep0") is None
            plain = redis.Redis.from_url(redis_url)
            assert 0 < plain.pttl(store.run_key("bm_keep2")) <= 30_000
            plain.close()
            assert await store.acquire("bm_keep2", 5) is None
            assert await store.acquire("bm_other", 5) == "bm_keep2"
            await store.release("bm_other")  # not its lock: nothing happens
            assert await store.acquire("bm_other", 5) == "bm_keep2"
            await store.release("bm_keep2")
            assert await store.acquire("bm_other", 5) is None
        finally:
            await store.close()

    asyncio.run(check())
