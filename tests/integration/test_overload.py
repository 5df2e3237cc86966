"""More sessions than the mesh can take: refused with a reason, never cut.

Real processes on loopback: a Redis server of this module's own, one CPU STT replica
configured for two sessions, and a gateway. Six clients stream a clip at real-time
pace at once. The ones the mesh cannot take must hear ``busy`` with ``retry_after``
before any audio is accepted; every admitted one must run to its normal end with its
words; and the replica must stay in routing for the next client.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from client.streaming import StreamResult, stream_audio
from tests.harness import (
    RedisServer,
    ServiceProcess,
    clip_named,
    error_rate,
    free_port,
    offline_transcript,
    start_routing_gateway,
    stream_errors,
)
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CLIP = clip_named("pocketsphinx-librivox-0890.wav")
CAPACITY = 2
CLIENTS = 6
WER_MARGIN = 1.0


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One STT replica that takes two sessions, behind a gateway."""
    logs = tmp_path_factory.mktemp("overload-logs")
    server = RedisServer(tmp_path_factory.mktemp("overload-redis"))
    server.start()
    from voicemesh.settings import default_home

    env = {
        "VOICEMESH_REDIS_URL": server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("overload-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.3",
        "VOICEMESH_GATEWAY_USE_DETECTOR": "false",
        "VOICEMESH_GATEWAY_STALL_TIMEOUT_S": "6",
        "VOICEMESH_STT_CPU_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_STT_CPU_MAX_SESSIONS": str(CAPACITY),
        "VOICEMESH_STT_CPU_BUSY_RETRY_AFTER_S": "4",
    }
    stt = ServiceProcess("stt_cpu_ws", free_port(), env, logs).start()
    gw: ServiceProcess | None = None
    try:
        stt.wait_healthy()
        gw = start_routing_gateway(env, logs)
        yield f"ws://127.0.0.1:{gw.port}/ws/transcribe"
    finally:
        if gw is not None:
            gw.stop()
        stt.stop()
        server.stop()


async def one_client(url: str, audio: Any) -> tuple[StreamResult | None, list[dict[str, Any]]]:
    """Stream the clip; return the result (None when the socket closed under us) and
    every message received, in order."""
    seen: list[dict[str, Any]] = []
    try:
        result = await stream_audio(
            url, audio, language="en", on_message=lambda _t, m: seen.append(m), timeout_s=120
        )
    except websockets.ConnectionClosed:
        return None, seen
    return result, seen


def test_sessions_past_capacity_are_refused_with_busy_and_the_rest_run_whole(gateway: str) -> None:
    audio = load_clip_16k(CLIP.path)

    async def crowd() -> list[tuple[StreamResult | None, list[dict[str, Any]]]]:
        return await asyncio.gather(*(one_client(gateway, audio) for _ in range(CLIENTS)))

    outcomes = asyncio.run(crowd())
    refused = [seen for _, seen in outcomes if seen and seen[0]["type"] == "error"]
    admitted = [(r, seen) for r, seen in outcomes if seen and seen[0]["type"] == "ready"]
    assert len(refused) + len(admitted) == CLIENTS, outcomes
    assert len(admitted) == CAPACITY, [seen[:1] for _, seen in outcomes]
    for seen in refused:
        # Refused before any audio was accepted: the refusal is the only message.
        assert len(seen) == 1, seen
        busy = seen[0]
        assert (busy["code"], busy["fatal"]) == ("busy", True), busy
        assert busy["retry_after"] == 4, busy
        assert "at capacity" in busy["message"] and "2 sessions" in busy["message"], busy
    reference = offline_transcript(CLIP)
    bound = error_rate(CLIP.text, reference) + WER_MARGIN
    for result, seen in admitted:
        assert result is not None, f"an admitted session was closed under its client: {seen}"
        assert not stream_errors(result), seen
        assert result.of_type("final"), seen
        assert error_rate(CLIP.text, result.transcript) <= bound, result.transcript


def test_a_busy_replica_stays_in_routing_for_the_next_client(gateway: str) -> None:
    """Busy is not failed: once the crowd has gone, the next client is served at once."""
    base = gateway.replace("ws://", "http://").rsplit("/ws/", 1)[0]
    health = httpx.get(f"{base}/health", timeout=5).json()
    assert health["stt_route"], health

    async def first_message() -> dict[str, Any]:
        async with websockets.connect(gateway) as ws:
            return json.loads(await asyncio.wait_for(ws.recv(), 30))

    assert asyncio.run(first_message())["type"] == "ready"
