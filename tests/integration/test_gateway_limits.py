"""Session limits of a gateway with API keys, in front of the real mesh.

A second gateway process joins the mesh's Redis with tight limits: one session per
key, two in all. Sessions reach the real CPU STT service, so a slot is held for as
long as a real session lives.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import numpy as np
import pytest
import websockets
from websockets.asyncio.client import ClientConnection

from tests.harness import ServiceProcess, clip_named, free_port
from tests.integration.conftest import Mesh
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEYS = ["key-one", "key-two", "key-three"]
REFUSAL_BOUND_S = 10.0
"""A refused client hears why without waiting for a slot: the sessions that hold the slots
stay open for the whole test, so a refusal that waited would never come. Generous on
purpose: how fast it comes is for benchmarks."""


@pytest.fixture(scope="module")
def tight_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A gateway on the mesh's Redis: keys on, 1 session per key, 2 in all."""
    env = {
        "VOICEMESH_REDIS_URL": mesh.redis.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps(KEYS),
        "VOICEMESH_GATEWAY_MAX_SESSIONS_PER_KEY": "1",
        "VOICEMESH_GATEWAY_MAX_SESSIONS_TOTAL": "2",
        "VOICEMESH_GATEWAY_BUSY_RETRY_AFTER_S": "3",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    gateway = ServiceProcess("gateway", free_port(), env, tmp_path_factory.mktemp("limits"))
    gateway.start()
    try:
        gateway.wait_healthy()
        deadline = time.monotonic() + 20
        while not httpx.get(f"{gateway.url}/health", timeout=2).json().get("stt_route"):
            assert time.monotonic() < deadline, gateway.log_tail()
            time.sleep(0.2)
        yield gateway.url
    finally:
        gateway.stop()


def ws_url(base: str, key: str) -> str:
    return base.replace("http://", "ws://") + f"/ws/transcribe?api_key={key}"


@asynccontextmanager
async def session(base: str, key: str) -> AsyncIterator[ClientConnection]:
    """A streaming session that got its ``ready`` from a real backend."""
    async with websockets.connect(ws_url(base, key)) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), 10))
        assert ready["type"] == "ready", ready
        yield ws


async def refusal(base: str, key: str) -> tuple[dict[str, Any], int, float]:
    """The error a refused session gets, its close code, and how long both took."""
    started = time.monotonic()
    async with websockets.connect(ws_url(base, key)) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), REFUSAL_BOUND_S))
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), REFUSAL_BOUND_S)
    assert closed.value.rcvd is not None
    return message, closed.value.rcvd.code, time.monotonic() - started


def active_sessions(base: str) -> int:
    status = httpx.get(f"{base}/v1/admin/status", headers={"X-API-Key": KEYS[0]}, timeout=5)
    status.raise_for_status()
    return int(status.json()["sessions"]["active"])


async def wait_active(base: str, expected: int, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while (got := await asyncio.to_thread(active_sessions, base)) != expected:
        assert time.monotonic() < deadline, f"{got} sessions active, expected {expected}"
        await asyncio.sleep(0.1)


async def test_second_session_of_a_key_is_busy_then_1013(tight_gateway: str) -> None:
    async with session(tight_gateway, KEYS[0]):
        message, code, took = await refusal(tight_gateway, KEYS[0])

        assert code == 1013
        assert message["type"] == "error"
        assert message["code"] == "busy"
        assert message["fatal"] is True
        assert message["retry_after"] == 3
        assert "1 concurrent" in message["message"]
        assert took < REFUSAL_BOUND_S
        # Another key still gets in: the limit is per key.
        async with session(tight_gateway, KEYS[1]):
            await wait_active(tight_gateway, 2)
    await wait_active(tight_gateway, 0)


async def test_gateway_wide_limit_refuses_any_key(tight_gateway: str) -> None:
    async with session(tight_gateway, KEYS[0]), session(tight_gateway, KEYS[1]):
        message, code, _ = await refusal(tight_gateway, KEYS[2])
        assert (message["code"], code) == ("busy", 1013)
        assert "2 concurrent" in message["message"]
    await wait_active(tight_gateway, 0)


async def test_a_slot_is_given_back_when_the_session_ends(tight_gateway: str) -> None:
    clip = clip_named("whisper-jfk.wav")
    audio = load_clip_16k(clip.path)[: 3 * 16000]
    pcm = (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()
    async with session(tight_gateway, KEYS[0]) as ws:
        for i in range(0, len(pcm), 3200):  # 100 ms frames, as a microphone sends them
            await ws.send(pcm[i : i + 3200])
        await ws.send(json.dumps({"type": "stop"}))
        finals = []
        async for raw in ws:
            message = json.loads(raw)
            if message["type"] == "final":
                finals.append(message["text"])
        assert "fellow" in " ".join(finals).lower()  # a real session, served to its end
    await wait_active(tight_gateway, 0)
    async with session(tight_gateway, KEYS[0]):
        await wait_active(tight_gateway, 1)


async def test_refusals_and_admissions_are_in_metrics(tight_gateway: str) -> None:
    async with session(tight_gateway, KEYS[2]):
        await refusal(tight_gateway, KEYS[2])
        await refusal(tight_gateway, "not-a-key")
    text = (await asyncio.to_thread(httpx.get, f"{tight_gateway}/metrics")).text
    lines = {
        line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("voicemesh_gateway_requests_total")
    }
    assert lines['voicemesh_gateway_requests_total{route="/ws/transcribe",status="1013"}'] >= 1
    assert lines['voicemesh_gateway_requests_total{route="/ws/transcribe",status="4401"}'] >= 1
    assert lines['voicemesh_gateway_requests_total{route="/ws/transcribe",status="101"}'] >= 1
    assert "voicemesh_gateway_backend_choice_total" in text
