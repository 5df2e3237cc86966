"""Model management: ``/v1/admin/models`` on the gateway, ``/v1/model/*`` on STT replicas.

Two real ``stt_cpu_ws`` apps run under uvicorn on loopback and register in a real
Redis, as replicas do: ``a-base`` with the bundled Whisper base, ``b-tiny`` with
Whisper tiny.en. The gateway runs in-process with an admin key and a client key. A
``tts_vits`` registry entry stands for a TTS replica (its models are only listed).
Every test leaves both models loaded and no default set.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
import weakref
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect
from websockets.sync.client import connect as ws_connect

from gateway.app import create_app
from gateway.settings import GatewaySettings
from stt_cpu_ws.app import SttCpuSettings
from tests.harness import (
    RedisServer,
    ThreadedServer,
    assert_error,
    clip_named,
    empty_redis_db,
    error_rate,
    free_port,
)
from voicemesh.audio_files import load_clip_16k
from voicemesh.registry import RegistryClient, ReplicaInfo
from voicemesh.stt.service import create_stt_app, load_engine
from voicemesh.stt.state import SttState

pytestmark = pytest.mark.service

MODELS_TEST_DB = 12
"""A Redis database of its own (the other service modules use 6 to 9)."""
ADMIN = {"Authorization": "Bearer models-admin-key"}
CLIENT = {"Authorization": "Bearer models-client-key"}
SHORT = clip_named("pocketsphinx-librivox-0930.wav")
FRAME = 3200  # 100 ms of PCM16 at 16 kHz


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module, emptied again afterwards."""
    with empty_redis_db(redis_server, MODELS_TEST_DB) as url:
        yield url


def replica_app(redis_url: str, instance_id: str, model: str, port: int) -> ThreadedServer:
    """A real STT replica holding ``model``, one decode worker, fast heartbeats."""
    settings = SttCpuSettings(
        redis_url=redis_url,
        port=port,
        instance_id=instance_id,
        model=model,
        workers=1,
        cpu_threads=1,
        heartbeat_interval_s=0.5,
    )
    return ThreadedServer(create_stt_app(settings), port)


@pytest.fixture(scope="module")
def replicas(redis_url: str) -> Iterator[dict[str, ThreadedServer]]:
    """``a-base`` and ``b-tiny`` serving, plus a TTS replica's registry entry."""
    now = time.time()
    tts = ReplicaInfo(
        instance_id="tts-1",
        kind="tts_vits",
        url=f"http://127.0.0.1:{free_port()}",
        model="en_US-joe-medium",
        engine="sherpa-onnx",
        capabilities=["synthesize", "stream", "compare", "voices"],
        started_at=now,
        updated_at=now,
    )

    async def write() -> None:
        client = RegistryClient(redis_url, ttl_s=600)
        try:
            await client.register(tts)
        finally:
            await client.close()

    asyncio.run(write())
    with (
        replica_app(redis_url, "a-base", "base", free_port()) as base,
        replica_app(redis_url, "b-tiny", "tiny.en", free_port()) as tiny,
    ):
        yield {"a-base": base, "b-tiny": tiny}


def stt_state(server: ThreadedServer) -> SttState:
    """The running replica's state (the app runs in this process)."""
    state: SttState = server.server.config.app.state.stt  # type: ignore[attr-defined]
    return state


def models(gateway: TestClient) -> dict[str, dict[str, Any]]:
    """``GET /v1/admin/models`` by id."""
    response = gateway.get("/v1/admin/models", headers=ADMIN)
    assert response.status_code == 200, response.text
    return {m["id"]: m for m in response.json()["models"]}


def statuses(gateway: TestClient, model_id: str) -> dict[str, str]:
    """Per-replica status of one model, as the admin listing shows it."""
    return {r["instance_id"]: r["status"] for r in models(gateway)[model_id]["replicas"]}


def wait_until(check: Callable[[], bool], what: str, timeout_s: float = 60) -> None:
    """Poll ``check`` until it holds."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def load_back(gateway: TestClient, *model_ids: str) -> None:
    """Load the models again and wait until every replica of each says loaded."""
    for model_id in model_ids:
        response = gateway.post(f"/v1/admin/models/{model_id}/load", headers=ADMIN)
        assert response.status_code == 200, response.text
    for model_id in model_ids:
        wait_until(
            lambda m=model_id: set(statuses(gateway, m).values()) == {"loaded"},  # type: ignore[misc]
            f"{model_id} loaded",
        )


@pytest.fixture(scope="module")
def gateway(replicas: dict[str, ThreadedServer], redis_url: str) -> Iterator[TestClient]:
    """The keyed gateway, once it lists both replicas with their models loaded."""
    settings = GatewaySettings(
        redis_url=redis_url,
        registry_refresh_s=0.1,
        probe_interval_s=0,
        use_detector=False,
        failed_hold_s=0.5,
        wyoming_enabled=False,
        api_keys=["models-client-key"],
        admin_key="models-admin-key",
    )
    with TestClient(create_app(settings)) as client:
        wait_until(
            lambda: (
                statuses(client, "base") == {"a-base": "loaded"}
                and statuses(client, "tiny.en").get("b-tiny") == "loaded"
            ),
            "both replicas",
        )
        yield client


@pytest.fixture
def mesh(gateway: TestClient) -> Iterator[TestClient]:
    """The gateway; after the test, both models are loaded again and the default unset."""
    yield gateway
    load_back(gateway, "base", "tiny.en")
    with contextlib.suppress(Exception):
        import redis

        url = str(gateway.app.state.gateway.view.client.redis_url)  # type: ignore[attr-defined]
        plain = redis.Redis.from_url(url)
        plain.delete("voicemesh:default_asr_model")
        plain.close()
    gateway.app.state.gateway.view.default_model = None  # type: ignore[attr-defined]


def stored_default(gateway: TestClient) -> str | None:
    """The default ASR model in Redis, read as another gateway would."""

    async def read() -> str | None:
        client = RegistryClient(gateway.app.state.gateway.view.client.redis_url)  # type: ignore[attr-defined]
        try:
            return await client.get_default_model()
        finally:
            await client.close()

    return asyncio.run(read())


def transcribe(gateway: TestClient, **form: str) -> httpx.Response:
    """``POST /v1/asr/transcribe`` of the short clip as the client."""
    files = {"audio": ("clip.wav", SHORT.path.read_bytes(), "audio/wav")}
    return gateway.post("/v1/asr/transcribe", files=files, data=form, headers=CLIENT)  # type: ignore[return-value]


# ------------------------------------------------------------------ listing and bad input


def test_the_listing_has_asr_and_tts_models_with_replica_status(mesh: TestClient) -> None:
    response = mesh.get("/v1/admin/models", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    by_id = {m["id"]: m for m in body["models"]}
    assert by_id["base"]["kind"] == "asr" and by_id["base"]["unloadable"] is True
    assert [(r["instance_id"], r["status"]) for r in by_id["base"]["replicas"]] == [
        ("a-base", "loaded")
    ]
    tts = by_id["en_US-joe-medium"]
    assert tts["kind"] == "tts" and tts["unloadable"] is False and tts["default"] is True
    assert body["default"]["tts"] == "en_US-joe-medium"
    assert body["default"]["asr"] in ("base", "tiny.en")


def test_admin_routes_need_the_admin_key(mesh: TestClient) -> None:
    assert_error(mesh.get("/v1/admin/models"), 401, "unauthorized")
    assert_error(mesh.get("/v1/admin/models", headers=CLIENT), 403, "forbidden")
    assert_error(mesh.post("/v1/admin/models/base/unload", headers=CLIENT), 403, "forbidden")
    assert_error(mesh.post("/v1/admin/models/base/default", headers=CLIENT), 403, "forbidden")
    assert statuses(mesh, "base") == {"a-base": "loaded"}


def test_an_unknown_model_is_404_naming_the_models(mesh: TestClient) -> None:
    for action in ("unload", "load", "default"):
        message = assert_error(
            mesh.post(f"/v1/admin/models/large-v9/{action}", headers=ADMIN), 404, "unknown_model"
        )
        assert "large-v9" in message and "base" in message and "tiny.en" in message, message


def test_unknown_fields_and_replicas_are_refused(mesh: TestClient) -> None:
    response = mesh.post("/v1/admin/models/base/unload", json={"forse": True}, headers=ADMIN)
    assert "forse" in assert_error(response, 422, "unknown_field")
    response = mesh.post("/v1/admin/models/base/unload", json={"replicas": ["zz"]}, headers=ADMIN)
    assert "a-base" in assert_error(response, 400, "unknown_replica")
    assert statuses(mesh, "base") == {"a-base": "loaded"}


def test_a_tts_model_is_not_unloadable(mesh: TestClient) -> None:
    response = mesh.post("/v1/admin/models/en_US-joe-medium/unload", headers=ADMIN)
    assert "TTS" in assert_error(response, 409, "not_unloadable")


# ------------------------------------------------------------------ unload and load


def test_unload_frees_the_replica_and_requests_go_elsewhere_then_load_serves_again(
    mesh: TestClient, replicas: dict[str, ThreadedServer]
) -> None:
    tiny_url = replicas["b-tiny"].url
    engine = weakref.ref(stt_state(replicas["b-tiny"]).transcriber)
    response = mesh.post("/v1/admin/models/tiny.en/unload", headers=ADMIN)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == "tiny.en" and body["action"] == "unload"
    [row] = body["replicas"]
    assert (row["instance_id"], row["status"], row["previous"]) == ("b-tiny", "unloaded", "loaded")
    gc.collect()
    assert engine() is None, "the unloaded engine is still referenced: its memory stays"
    # The registry says so at once, and the replica's own health too.
    assert statuses(mesh, "tiny.en")["b-tiny"] == "unloaded"
    health = httpx.get(f"{tiny_url}/health").json()
    assert health["model_loaded"] is False and health["model_status"] == "unloaded"
    # The replica itself refuses files (503) and sessions (WS error) with model_unloaded.
    files = {"file": ("clip.wav", SHORT.path.read_bytes(), "audio/wav")}
    assert_error(httpx.post(f"{tiny_url}/v1/transcribe", files=files), 503, "model_unloaded")
    with ws_connect(tiny_url.replace("http", "ws") + "/ws/transcribe") as ws:
        refusal = ws.recv(timeout=10)
    assert '"model_unloaded"' in str(refusal) and '"fatal":true' in str(refusal).replace(" ", "")
    # Through the gateway: a request for it is a clear 409, one without model goes to base.
    assert "tiny.en" in assert_error(transcribe(mesh, model="tiny.en"), 409, "model_cannot_serve")
    served = transcribe(mesh)
    assert served.status_code == 200, served.text
    assert served.json()["model"] == "base"
    assert served.json()["metadata"]["failovers"] == 0  # routed there, not failed over
    # Loading it back: loading, then loaded and serving again.
    body = {"replicas": ["b-tiny"], "force": True}  # force means nothing to a load: no harm
    response = mesh.post("/v1/admin/models/tiny.en/load", json=body, headers=ADMIN)
    assert response.status_code == 200, response.text
    [row] = response.json()["replicas"]
    assert row["previous"] == "unloaded" and row["status"] in ("loading", "loaded")
    wait_until(lambda: statuses(mesh, "tiny.en")["b-tiny"] == "loaded", "tiny.en loaded")
    served = transcribe(mesh, model="tiny.en")
    assert served.status_code == 200, served.text
    assert served.json()["model"] == "tiny.en"
    assert error_rate(SHORT.text, served.json()["text"]) <= 25.0, served.json()["text"]


def test_the_last_loaded_stt_model_needs_force(mesh: TestClient) -> None:
    assert mesh.post("/v1/admin/models/tiny.en/unload", headers=ADMIN).status_code == 200
    message = assert_error(
        mesh.post("/v1/admin/models/base/unload", headers=ADMIN), 409, "model_in_use"
    )
    assert "last loaded STT model" in message and "force" in message, message
    assert statuses(mesh, "base") == {"a-base": "loaded"}
    forced = mesh.post("/v1/admin/models/base/unload", json={"force": True}, headers=ADMIN)
    assert forced.status_code == 200, forced.text
    assert forced.json()["replicas"][0]["status"] == "unloaded"
    # Nothing is left to transcribe with: the gateway says so instead of hanging.
    assert transcribe(mesh).status_code == 503


def pcm_of(clip: Any) -> bytes:
    """A clip as 16 kHz PCM16 bytes."""
    return (load_clip_16k(clip.path) * 32767).astype(np.int16).tobytes()


@pytest.mark.timeout(120)
def test_open_sessions_refuse_unload_and_a_forced_one_moves_them(
    mesh: TestClient, replicas: dict[str, ThreadedServer]
) -> None:
    set_default = mesh.post("/v1/admin/models/base/default", headers=ADMIN)
    assert set_default.status_code == 200, set_default.text
    pcm = pcm_of(SHORT)
    half = len(pcm) // 2 // FRAME * FRAME
    with mesh.websocket_connect("/ws/transcribe?api_key=models-client-key") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["model"] == "base", ready
        for start in range(0, half, FRAME):
            ws.send_bytes(pcm[start : start + FRAME])
        refused = mesh.post("/v1/admin/models/base/unload", headers=ADMIN)
        message = assert_error(refused, 409, "model_in_use")
        assert "1 open session" in message, message
        assert refused.json()["error"]["replicas"][0]["status"] == "loaded"
        forced = mesh.post("/v1/admin/models/base/unload", json={"force": True}, headers=ADMIN)
        assert forced.status_code == 200, forced.text
        assert forced.json()["replicas"][0]["sessions_ended"] == 1
        for start in range(half, len(pcm), FRAME):
            ws.send_bytes(pcm[start : start + FRAME])
        ws.send_json({"type": "stop"})
        messages = []
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                messages.append(ws.receive_json())
    failover = [m for m in messages if m["type"] == "failover"]
    assert failover and failover[0]["to"] == replicas["b-tiny"].url, messages
    assert "unloaded" in failover[0]["reason"], failover
    finals = [m for m in messages if m["type"] == "final"]
    assert finals and all(m["backend"] == replicas["b-tiny"].url for m in finals), messages
    assert not [m for m in messages if m["type"] == "error"], messages


# ------------------------------------------------------------------ default model


def test_the_default_model_is_set_reflected_and_used(mesh: TestClient) -> None:
    response = mesh.post("/v1/admin/models/tiny.en/default", headers=ADMIN)
    assert response.status_code == 200, response.text
    assert response.json()["default"] == "tiny.en" and response.json()["shared"] is True
    listed = mesh.get("/v1/asr/models", headers=CLIENT).json()
    assert listed["default"] == "tiny.en", listed
    assert mesh.get("/v1/admin/models", headers=ADMIN).json()["default"]["asr"] == "tiny.en"
    served = transcribe(mesh)
    assert served.status_code == 200, served.text
    assert served.json()["model"] == "tiny.en"
    # Every gateway follows it: it is in Redis under the registry prefix.
    assert stored_default(mesh) == "tiny.en"
    back = mesh.post("/v1/admin/models/base/default", headers=ADMIN)
    assert back.json() == {"default": "base", "previous": "tiny.en", "shared": True}
    assert transcribe(mesh).json()["model"] == "base"


def test_a_default_no_replica_can_serve_is_409(mesh: TestClient) -> None:
    assert mesh.post("/v1/admin/models/tiny.en/unload", headers=ADMIN).status_code == 200
    refused = mesh.post("/v1/admin/models/tiny.en/default", headers=ADMIN)
    assert "tiny.en" in assert_error(refused, 409, "model_cannot_serve")


# ------------------------------------------------------------------ one replica alone


def test_a_replica_refuses_with_sessions_and_reports_a_failed_load(tmp_path: Path) -> None:
    """The replica's own routes: a handed-in tiny.en engine, settings naming a folder that
    does not exist, so loading it again really fails (nothing is patched)."""
    missing = tmp_path / "no-such-whisper"
    engine = load_engine(SttCpuSettings(model="tiny.en", cpu_threads=1, workers=1))
    settings = SttCpuSettings(redis_url="", model=str(missing), workers=1, cpu_threads=1)
    with TestClient(create_stt_app(settings, transcriber=engine)) as replica:
        del engine  # the replica's state holds the only reference now
        refused = replica.post("/v1/model/unload", json={"forse": True})
        assert "forse" in assert_error(refused, 422, "unknown_field")
        with replica.websocket_connect("/ws/transcribe") as ws:
            assert ws.receive_json()["type"] == "ready"
            message = assert_error(replica.post("/v1/model/unload"), 409, "model_in_use")
            assert "1 open session(s)" in message and "force" in message, message
            ws.send_json({"type": "stop"})
            with contextlib.suppress(WebSocketDisconnect):
                while True:
                    ws.receive_json()
        wait_until(lambda: replica.get("/health").json()["sessions"] == 0, "session over")
        unloaded = replica.post("/v1/model/unload")
        assert unloaded.status_code == 200, unloaded.text
        assert unloaded.json()["status"] == "unloaded"
        assert unloaded.json()["previous"] == "loaded"
        with replica.websocket_connect("/ws/transcribe") as ws:
            refusal = ws.receive_json()
        assert refusal["code"] == "model_unloaded" and refusal["fatal"] is True, refusal
        started = replica.post("/v1/model/load")
        assert started.status_code == 202, started.text
        assert (started.json()["status"], started.json()["previous"]) == ("loading", "unloaded")
        wait_until(
            lambda: replica.get("/health").json()["model_status"] == "failed", "the failed load"
        )
        health = replica.get("/health").json()
        assert health["model_loaded"] is False and "no-such-whisper" in health["model_error"]
        files = {"file": ("clip.wav", SHORT.path.read_bytes(), "audio/wav")}
        message = assert_error(replica.post("/v1/transcribe", files=files), 503, "model_unloaded")
        assert "failed" in message and "no-such-whisper" in message, message
