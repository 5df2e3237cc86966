"""Limits of a streaming session: idle clients, audio sent far ahead of the decoder, and a
storm of connections past the gateway's session limit.

Idle streaming clients are closed: ``idle_timeout``, then close code 4408.

The real ``stt_cpu_ws`` app (bundled Whisper base) and the gateway routing to it run
under real uvicorn on loopback, in threads of this test process, with idle limits
small enough to fire in a test: the gateway's (0.5 s before ``start``/audio, 1 s
mid-session) below the STT service's (2 s, 3 s), as README says to keep them. A
session gone idle mid-speech still gets its finals before the error and the close,
and the servers go on serving the next session. A gateway with a small
``max_audio_ahead_s`` refuses the frames of a client far ahead of its finals with a
non-fatal ``audio_ahead``, keeps what it took, and ends the session normally. A gateway
holding 2 sessions at most turns away 300 connections opened at once with ``busy`` (and
``retry_after``) or serves them, while a session already going gets all its finals.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import soundfile
from websockets.asyncio.client import connect as connect_async
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from stt_cpu_ws.app import SttCpuSettings
from tests.harness import ThreadedServer, clip_named, normalize, stt_behind_gateway
from voicemesh.protocol import CLOSE_IDLE, CLOSE_NORMAL, CLOSE_TRY_AGAIN
from voicemesh.stt.service import create_stt_app

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

GATEWAY_IDLE = (0.5, 1.0)
STT_IDLE = (2.0, 3.0)
AHEAD_LIMIT_S = 2.0
STORM = 300
STORM_SESSIONS = 2
PENDING_LIMIT = 16 * 1024  # 0.5 s of 16 kHz PCM16 in the STT service's inbox
JFK = clip_named("whisper-jfk.wav")


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[str, str]]:
    """The STT service and the gateway in front of it; their base WebSocket URLs."""
    stt = {"idle_ready_s": STT_IDLE[0], "idle_session_s": STT_IDLE[1]}
    gateway = {"idle_ready_s": GATEWAY_IDLE[0], "idle_session_s": GATEWAY_IDLE[1]}
    with stt_behind_gateway(stt, gateway) as urls:
        yield urls


@pytest.fixture(scope="module")
def ahead() -> Iterator[dict[str, str]]:
    """A gateway that holds 2 s of audio ahead of finals (its STT service the default), and
    an STT service alone whose inbox holds 16 KiB ahead of its decoder; ``/ws/transcribe``."""
    small = create_stt_app(SttCpuSettings(redis_url="", max_pending_bytes=PENDING_LIMIT))
    with (
        ThreadedServer(small) as stt,
        stt_behind_gateway({}, {"max_audio_ahead_s": AHEAD_LIMIT_S}) as urls,
    ):
        yield {
            "gateway": urls["gateway"] + "/ws/transcribe",
            "stt": stt.url.replace("http", "ws") + "/ws/transcribe",
        }


def read_to_close(ws: ClientConnection) -> list[dict[str, Any]]:
    """Every message until the server closes the socket."""
    messages = []
    try:
        while True:
            messages.append(json.loads(ws.recv(timeout=120)))
    except ConnectionClosed:
        pass
    return messages


def jfk_pcm() -> tuple[bytes, int]:
    """The JFK clip as PCM16 bytes and its rate."""
    samples, rate = soundfile.read(JFK.path, dtype="int16")
    return samples.tobytes(), rate


def finals_words(messages: list[dict[str, Any]]) -> list[str]:
    """The finals' words, normalised."""
    return normalize(" ".join(m["text"] for m in messages if m["type"] == "final"))


@pytest.mark.parametrize(
    ("target", "path", "limit"),
    [
        ("gateway", "/ws/transcribe", GATEWAY_IDLE[0]),
        ("gateway", "/v1/asr/stream", GATEWAY_IDLE[0]),
        ("stt", "/ws/transcribe", STT_IDLE[0]),
    ],
)
def test_a_client_that_sends_nothing_after_ready_is_closed_idle(
    servers: dict[str, str], target: str, path: str, limit: float
) -> None:
    with connect(servers[target] + path, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        began = time.monotonic()
        messages = read_to_close(ws)
        waited = time.monotonic() - began
        assert ws.close_code == CLOSE_IDLE
    assert limit <= waited < limit + 5, waited
    assert messages[-1]["type"] == "error", messages
    assert messages[-1]["code"] == "idle_timeout"
    assert messages[-1]["fatal"] is True
    assert "'start' or audio" in messages[-1]["message"]


@pytest.mark.parametrize("target", ["gateway", "stt"])
def test_a_session_gone_quiet_gets_its_finals_then_the_idle_close(
    servers: dict[str, str], target: str
) -> None:
    pcm, rate = jfk_pcm()
    with connect(servers[target] + "/ws/transcribe", open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        for i in range(0, len(pcm), 6400):
            ws.send(pcm[i : i + 6400])
        messages = read_to_close(ws)  # no stop: the client just goes quiet
        assert ws.close_code == CLOSE_IDLE
    assert finals_words(messages) == normalize(JFK.text)
    last = messages[-1]
    assert (last["type"], last["code"]) == ("error", "idle_timeout"), messages
    assert "no message for" in last["message"]
    assert all(m["type"] != "error" for m in messages[:-1]), messages


def test_a_client_sending_audio_slowly_is_not_idle(servers: dict[str, str]) -> None:
    """Frames closer together than the idle limit keep the session: its stop ends it normally."""
    pcm, rate = jfk_pcm()
    frame = rate // 2 * 2  # 0.5 s of audio (2 bytes a sample) every 0.4 s: under the 1 s limit
    with connect(servers["gateway"] + "/ws/transcribe", open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        time.sleep(GATEWAY_IDLE[0] / 2)
        ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        for i in range(0, 8 * frame, frame):  # 4 s
            time.sleep(0.4)
            ws.send(pcm[i : i + frame])
        ws.send(json.dumps({"type": "stop"}))
        messages = read_to_close(ws)
        assert ws.close_code == CLOSE_NORMAL
    assert all(m["type"] != "error" for m in messages), messages
    assert finals_words(messages)[:4] == ["and", "so", "my", "fellow"]


def send_jfk_at_once(url: str, frame: int) -> list[dict[str, Any]]:
    """Send the whole JFK clip in ``frame``-byte frames with no pause, then stop; all replies."""
    pcm, rate = jfk_pcm()
    with connect(url, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
        ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        for i in range(0, len(pcm), frame):  # 11 s at once: far faster than it decodes
            ws.send(pcm[i : i + frame])
        ws.send(json.dumps({"type": "stop"}))
        messages = read_to_close(ws)
        assert ws.close_code == CLOSE_NORMAL
    return messages


def test_the_stt_inbox_refuses_audio_past_its_limit_and_keeps_the_rest(
    ahead: dict[str, str],
) -> None:
    frame = 4000  # 0.125 s
    messages = send_jfk_at_once(ahead["stt"], frame)
    errors = [m for m in messages if m["type"] == "error"]
    assert errors, messages
    for error in errors:
        assert (error["code"], error["fatal"]) == ("audio_ahead", False), error
        assert error["limit_bytes"] == PENDING_LIMIT
        assert PENDING_LIMIT - frame < error["ahead_bytes"] <= PENDING_LIMIT
    refused = len(errors) * frame
    assert refused < len(jfk_pcm()[0])  # some audio was taken
    # what was taken was decoded (its words vary: the refused frames left gaps in the speech)
    assert finals_words(messages), messages
    # the service is still up: a new session is served
    with connect(ahead["stt"], open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"


def test_audio_far_ahead_of_the_finals_is_refused_and_the_rest_kept(
    ahead: dict[str, str],
) -> None:
    frame = jfk_pcm()[1] // 5 * 2  # 0.2 s
    messages = send_jfk_at_once(ahead["gateway"], frame)
    errors = [m for m in messages if m["type"] == "error"]
    assert errors, messages
    for error in errors:
        assert error["code"] == "audio_ahead"
        assert error["fatal"] is False
        assert error["limit_s"] == AHEAD_LIMIT_S
        assert AHEAD_LIMIT_S - 0.2 < error["ahead_s"] <= AHEAD_LIMIT_S
    words = finals_words(messages)
    assert words, messages  # what was taken (the first 2 s) is transcribed, not dropped
    assert words[:3] == normalize(JFK.text)[: len(words[:3])]
    assert "country" not in words  # the refused frames were not transcribed


@pytest.fixture(scope="module")
def small_gateway() -> Iterator[str]:
    """A gateway that holds at most 2 sessions (and no rate limit to speak of)."""
    gateway = {
        "max_sessions_total": STORM_SESSIONS,
        "requests_per_minute_total": 100_000,
        "requests_per_minute_per_key": 100_000,
    }
    with stt_behind_gateway({}, gateway) as urls:
        yield urls["gateway"] + "/ws/transcribe"


async def storm_connection(url: str) -> tuple[str, dict[str, Any], int | None]:
    """Open one session and see what it gets first: ``ready`` (then stop) or an error."""
    async with connect_async(url, open_timeout=60) as ws:
        first = json.loads(await asyncio.wait_for(ws.recv(), 60))
        if first["type"] == "ready":
            await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(ConnectionClosed):
            while True:
                await asyncio.wait_for(ws.recv(), 60)
        return first["type"], first, ws.close_code


async def live_session_during_storm(url: str) -> tuple[list[dict[str, Any]], list[Any]]:
    """A session streams JFK at 4x real time while 300 others are opened at once."""
    pcm, rate = jfk_pcm()
    frame = rate // 5 * 2  # 0.2 s
    async with connect_async(url, open_timeout=30) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "start", "sample_rate": rate}))
        storm = asyncio.gather(*(storm_connection(url) for _ in range(STORM)))
        for i in range(0, len(pcm), frame):
            await ws.send(pcm[i : i + frame])
            await asyncio.sleep(0.05)
        await ws.send(json.dumps({"type": "stop"}))
        messages = []
        with contextlib.suppress(ConnectionClosed):
            while True:
                messages.append(json.loads(await asyncio.wait_for(ws.recv(), 120)))
        assert ws.close_code == CLOSE_NORMAL
        return messages, await storm


def test_a_connection_storm_is_refused_busy_while_a_live_session_keeps_its_finals(
    small_gateway: str,
) -> None:
    messages, storm = asyncio.run(live_session_during_storm(small_gateway))
    assert [m for m in messages if m["type"] == "error"] == []
    assert finals_words(messages) == normalize(JFK.text)
    kinds = [kind for kind, _, _ in storm]
    assert set(kinds) <= {"ready", "error"}, kinds
    refused = [(first, code) for kind, first, code in storm if kind == "error"]
    assert len(refused) >= STORM - 50, kinds.count("ready")  # one slot is free at a time
    for first, close_code in refused:
        assert (first["code"], first["fatal"]) == ("busy", True), first
        assert first["retry_after"] >= 1
        assert close_code == CLOSE_TRY_AGAIN
    # and the gateway serves again once the storm is over
    with connect(small_gateway, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "ready"
