"""The specification's ASR API on the gateway: ``POST /v1/asr/transcribe``,
``GET /v1/asr/models``, ``WS /v1/asr/stream``.

The gateway runs in-process (``TestClient``) with API keys on; behind it, the real
``stt_cpu_ws`` app with the bundled Whisper base runs under uvicorn on loopback and
registers itself in a real Redis, as a replica does. The speech detector is the
registry entry it writes (Whisper tiny.en held to confirm speech only), and the replica
that dies is an entry whose port nothing listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

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
from voicemesh.registry import AsrModel, RegistryClient, ReplicaInfo
from voicemesh.stt.service import create_stt_app

pytestmark = pytest.mark.service

ASR_TEST_DB = 8
"""A Redis database of its own: the integration mesh (db 0) and the admin tests (db 7)
never see these replicas."""
KEY = "asr-client-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
JFK = clip_named("whisper-jfk.wav")
SHORT = clip_named(
    "pocketsphinx-librivox-0930.wav"
)  # "he might even have been made amiable himself"
WER_LIMIT = 15.0
MARKUP = re.compile(r"\[\d{2}:\d{2}\.\d{2}\]|\d{2}:\d{2}:\d{2}[,.]\d{3}|-->|WEBVTT|^\d+$", re.M)
"""Cue numbers, times and headers: what is left is the transcript's words."""
CUE = re.compile(r"^\d{2}:\d{2}:\d{2}[,.]\d{3} --> \d{2}:\d{2}:\d{2}[,.]\d{3}$", re.M)


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module, emptied again afterwards."""
    with empty_redis_db(redis_server, ASR_TEST_DB) as url:
        yield url


def register(redis_url: str, replica: ReplicaInfo, *, remove: bool = False) -> None:
    """Write (or delete) a registry entry the way a replica's heartbeat does."""

    async def write() -> None:
        client = RegistryClient(redis_url, ttl_s=600)
        try:
            if remove:
                await client.deregister(replica.kind, replica.instance_id)
            else:
                await client.register(replica)
        finally:
            await client.close()

    asyncio.run(write())


def detector_entry() -> ReplicaInfo:
    """What ``stt_tiny_ws`` registers: Silero VAD plus Whisper tiny.en to confirm speech."""
    now = time.time()
    return ReplicaInfo(
        instance_id="detector-1",
        kind="stt_tiny_ws",
        url=f"http://127.0.0.1:{free_port()}",
        model="silero-vad+tiny.en",
        engine="silero-vad",
        capabilities=["detect", "confirm"],
        asr_models=[
            AsrModel(name="tiny.en", engine="faster-whisper", use="confirm", languages=["en"])
        ],
        started_at=now,
        updated_at=now,
    )


def dead_stt_entry(instance_id: str, model: str) -> ReplicaInfo:
    """An STT replica's registry entry holding ``model``, on a port nothing listens on."""
    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind="stt_cpu_ws",
        url=f"http://127.0.0.1:{free_port()}",
        model=model,
        engine="faster-whisper",
        capabilities=["transcribe", "stream"],
        asr_models=[AsrModel(name=model, engine="faster-whisper")],
        started_at=now,
        updated_at=now,
    )


@pytest.fixture(scope="module")
def stt(redis_url: str) -> Iterator[ThreadedServer]:
    """The real stt_cpu_ws app (Whisper base) on loopback, registered in the test Redis."""
    port = free_port()
    settings = SttCpuSettings(redis_url=redis_url, port=port, heartbeat_interval_s=0.5)
    register(redis_url, detector_entry())
    with ThreadedServer(create_stt_app(settings), port) as server:
        yield server


def gateway_settings(redis_url: str, **overrides: Any) -> GatewaySettings:
    """A keyed gateway on the test Redis, quick to see registry changes."""
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "registry_refresh_s": 0.1,
        "probe_interval_s": 0,
        "use_detector": False,
        "api_keys": [KEY],
        **overrides,
    }
    return GatewaySettings(**values)


def wait_for(client: TestClient, ready: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """``GET /v1/asr/models`` until ``ready`` holds for its body (the registry refreshes)."""
    deadline = time.monotonic() + 30
    while True:
        body: dict[str, Any] = client.get("/v1/asr/models", headers=AUTH).json()
        if ready(body):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.1)


def model_entry(body: dict[str, Any], model_id: str) -> dict[str, Any]:
    """One model of a ``GET /v1/asr/models`` answer."""
    found = [m for m in body["models"] if m["id"] == model_id]
    assert len(found) == 1, body
    return found[0]


def stt_seen(body: dict[str, Any]) -> bool:
    """The gateway lists the live STT replica holding base."""
    return any(
        m["id"] == "base" and any(r["kind"] == "stt_cpu_ws" for r in m["replicas"])
        for m in body["models"]
    )


@pytest.fixture(scope="module")
def gateway(stt: ThreadedServer, redis_url: str) -> Iterator[TestClient]:
    """The gateway, once it sees the STT replica."""
    with TestClient(create_app(gateway_settings(redis_url))) as client:
        wait_for(client, stt_seen)
        yield client


def post(
    client: TestClient, clip_bytes: bytes, headers: dict[str, str] | None = None, **form: str
) -> Any:
    """``POST /v1/asr/transcribe`` with ``audio`` and the form fields given."""
    files = {"audio": ("clip.wav", clip_bytes, "audio/wav")}
    return client.post(
        "/v1/asr/transcribe", files=files, data=form, headers=AUTH if headers is None else headers
    )


# ---------------------------------------------------------------- transcription


def test_json_answer_has_every_field_of_the_specification(gateway: TestClient) -> None:
    response = post(gateway, JFK.path.read_bytes(), model="base", enable_diarization="false")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True
    assert error_rate(JFK.text, body["text"]) <= WER_LIMIT, body["text"]
    assert body["model"] == "base" and body["format"] == "json"
    assert body["language"] == "en"
    assert body["duration_seconds"] == pytest.approx(JFK.duration_s, abs=0.05)
    assert body["processing_time_ms"] > 0
    segments = body["segments"]
    assert segments and " ".join(s["text"] for s in segments).split() == body["text"].split()
    previous = 0.0
    for segment in segments:
        assert previous <= segment["start_time"] <= segment["end_time"] <= JFK.duration_s + 0.5
        assert 0 < segment["confidence"] <= 1
        previous = segment["start_time"]
    # The documented formula: exp of the duration-weighted mean log-probability, which the
    # segment confidences (exp of each one's) give back up to their rounding.
    spans = [max(s["end_time"] - s["start_time"], 0.01) for s in segments]
    logs = [math.log(s["confidence"]) for s in segments]
    expected = math.exp(sum(w * x for w, x in zip(spans, logs, strict=True)) / sum(spans))
    assert body["confidence"] == pytest.approx(expected, abs=2e-3)
    metadata = body["metadata"]
    assert metadata["engine"] == "faster-whisper/cpu"
    assert metadata["model_load_time_ms"] > 0  # the replica loaded base in its lifespan
    assert 0 < metadata["rtf"] < 10
    assert response.headers["x-voicemesh-model"] == "base"
    assert "x-voicemesh-failover" not in response.headers


@pytest.mark.parametrize(
    ("response_format", "media_type"),
    [
        ("srt", "application/x-subrip"),
        ("vtt", "text/vtt"),
        ("txt", "text/plain"),
        ("lrc", "text/plain"),
    ],
)
def test_text_formats_come_with_their_content_type(
    gateway: TestClient, response_format: str, media_type: str
) -> None:
    response = post(gateway, SHORT.path.read_bytes(), response_format=response_format)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)
    text = response.text
    assert not text.lstrip().startswith("{")
    if response_format == "srt":
        assert text.startswith("1\n") and CUE.search(text), text
    elif response_format == "vtt":
        assert text.startswith("WEBVTT") and CUE.search(text), text
    elif response_format == "lrc":
        assert re.match(r"^\[\d{2}:\d{2}\.\d{2}\] \S", text), text
    assert error_rate(SHORT.text, MARKUP.sub(" ", text)) <= WER_LIMIT, text


def test_diarization_is_refused_never_ignored(gateway: TestClient) -> None:
    message = assert_error(
        post(gateway, SHORT.path.read_bytes(), enable_diarization="true"),
        422,
        "feature_unavailable",
    )
    assert "diarization" in message


def test_an_unknown_form_field_is_named(gateway: TestClient) -> None:
    response = post(gateway, SHORT.path.read_bytes(), temperature="0.2")
    assert "temperature" in assert_error(response, 422, "unknown_field")


def test_an_unknown_response_format_is_a_validation_error(gateway: TestClient) -> None:
    response = post(gateway, SHORT.path.read_bytes(), response_format="verbose_json")
    assert "response_format" in assert_error(response, 422, "validation_error")


def test_an_unknown_model_is_a_404_naming_the_models_available(gateway: TestClient) -> None:
    message = assert_error(
        post(gateway, SHORT.path.read_bytes(), model="large-v9"), 404, "unknown_model"
    )
    assert "large-v9" in message and "base" in message


def test_a_detector_only_model_is_a_409_naming_the_ones_that_transcribe(
    gateway: TestClient,
) -> None:
    response = post(gateway, SHORT.path.read_bytes(), model="tiny.en")
    message = assert_error(response, 409, "model_cannot_serve")
    assert "tiny.en" in message and "base" in message


def test_a_model_alias_reaches_the_replica_that_holds_it(gateway: TestClient) -> None:
    response = post(gateway, SHORT.path.read_bytes(), model="whisper-base")
    assert response.status_code == 200, response.text
    assert response.json()["model"] == "base"


def test_a_wrong_key_is_a_401(gateway: TestClient) -> None:
    headers = {"Authorization": "Bearer not-a-key"}
    assert_error(post(gateway, SHORT.path.read_bytes(), headers=headers), 401, "unauthorized")
    assert_error(gateway.get("/v1/asr/models"), 401, "unauthorized")


def test_a_file_over_the_upload_limit_is_a_413(stt: ThreadedServer, redis_url: str) -> None:
    settings = gateway_settings(redis_url, max_upload_bytes=64 * 1024)
    with TestClient(create_app(settings)) as client:
        wait_for(client, stt_seen)
        response = post(client, JFK.path.read_bytes())  # 350 kB
    assert_error(response, 413, "file_too_large")


def test_a_dead_replica_is_failed_over_and_listed_as_failed(
    gateway: TestClient, redis_url: str
) -> None:
    dead = dead_stt_entry("0-dead", "base")  # sorts first at equal load: tried first
    register(redis_url, dead)
    try:
        wait_for(gateway, lambda b: len(model_entry(b, "base")["replicas"]) == 2)
        response = post(gateway, SHORT.path.read_bytes())
        assert response.status_code == 200, response.text
        assert response.headers["x-voicemesh-failover"] == "1"
        assert response.json()["metadata"]["failovers"] == 1
        base = model_entry(gateway.get("/v1/asr/models", headers=AUTH).json(), "base")
        statuses = {r["instance_id"]: r["status"] for r in base["replicas"]}
        assert statuses["0-dead"] == "failed"
        assert base["status"] == "loaded"  # the live replica still serves it
    finally:
        register(redis_url, dead, remove=True)


def test_a_replica_of_another_model_is_never_tried(gateway: TestClient, redis_url: str) -> None:
    other = dead_stt_entry("0-small", "small")  # first in routing order, were the model ignored
    register(redis_url, other)
    try:
        wait_for(gateway, lambda b: any(m["id"] == "small" for m in b["models"]))
        response = post(gateway, SHORT.path.read_bytes(), model="base")
        assert response.status_code == 200, response.text
        assert "x-voicemesh-failover" not in response.headers
        assert response.json()["model"] == "base"
    finally:
        register(redis_url, other, remove=True)


# ---------------------------------------------------------------- models


def test_models_lists_base_and_the_detectors_tiny_en(
    gateway: TestClient, stt: ThreadedServer
) -> None:
    post(gateway, SHORT.path.read_bytes())  # at least one measured request
    body = wait_for(gateway, lambda b: model_entry(b, "base")["performance"]["rtf"] is not None)
    base = model_entry(body, "base")
    assert body["default"] == "base" and base["default"] is True
    assert base["name"] == "Whisper base" and base["type"] == "faster-whisper"
    assert base["status"] == "loaded"
    capabilities = base["capabilities"]
    assert capabilities["streaming"] is True and capabilities["timestamps"] is True
    assert capabilities["diarization"] is False
    assert {"en", "zh", "de"} <= set(capabilities["languages"])
    live = next(r for r in base["replicas"] if r["kind"] == "stt_cpu_ws")
    assert live["use"] == "transcribe" and live["model_load_time_ms"] > 0
    # Measured by the replica itself from its own decodes, not a constant.
    assert base["performance"]["rtf"] > 0 and base["performance"]["latency_ms"] > 0
    assert httpx.get(f"{stt.url}/health", timeout=5).json()["rtf"] > 0
    tiny = model_entry(body, "tiny.en")
    assert tiny["default"] is False and tiny["status"] == "loaded"
    assert tiny["transcribes_files"] is False
    assert tiny["capabilities"]["streaming"] is False
    assert tiny["capabilities"]["languages"] == ["en"]
    assert [r["use"] for r in tiny["replicas"]] == ["confirm"]
    assert tiny["performance"] == {"rtf": None, "latency_ms": None}  # nothing measured yet


# ---------------------------------------------------------------- streaming


@pytest.mark.timeout(120)  # a session that never closes fails here instead of hanging
def test_the_stream_is_served_at_the_specifications_path(gateway: TestClient) -> None:
    pcm = (load_clip_16k(SHORT.path) * 32767).astype(np.int16).tobytes()
    with gateway.websocket_connect(f"/v1/asr/stream?api_key={KEY}") as ws:
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["model"] == "base", ready
        for start in range(0, len(pcm), 3200):
            ws.send_bytes(pcm[start : start + 3200])
        ws.send_json({"type": "stop"})
        finals = []
        with contextlib.suppress(WebSocketDisconnect):  # the session closes after stop
            while True:
                message = ws.receive_json()
                assert message["type"] != "error", message
                if message["type"] == "final":
                    finals.append(message["text"])
    assert error_rate(SHORT.text, " ".join(finals)) <= WER_LIMIT, finals
