"""Session resume through real gateways: a session outlives its connection and its gateway.

The mesh's real services and Redis, and gateways of this module's own on the same Redis.
A client streams several utterances at twice real time; its gateway is SIGKILLed (or its
connection cut) mid-stream; it reconnects to another gateway replica with its resume
token and the index of its last final, sends the audio after what the gateway acked, and
the transcript goes on: every final once, in order, with continuous times, and the words
of every utterance in it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import websockets

from tests.harness import (
    ServiceProcess,
    clip_named,
    error_rate,
    start_routing_gateway,
)
from tests.integration.conftest import Mesh
from voicemesh.audio_files import load_clip_16k
from voicemesh.protocol import SAMPLE_RATE

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

CLIPS = [
    clip_named(n) for n in ("pocketsphinx-librivox-0870.wav", "pocketsphinx-librivox-0890.wav")
]
CLIPS += [
    clip_named(n) for n in ("pocketsphinx-librivox-0920.wav", "pocketsphinx-librivox-0930.wav")
]
GAP_S = 1.2
FRAME_S = 0.1
PACE = 2.0
"""Audio is sent at twice real time (the acks keep wall-clock time)."""
KEY_A = "resume-key-a-0123456789"
KEY_B = "resume-key-b-0123456789"
WER_LIMIT = 15.0


def utterances() -> tuple[bytes, str]:
    """The clips one after another with silence between (PCM16), and their joined text."""
    gap = np.zeros(int(GAP_S * SAMPLE_RATE), dtype=np.float32)
    audio = np.concatenate([part for c in CLIPS for part in (load_clip_16k(c.path), gap)])
    return (audio * 32767).astype("<i2").tobytes(), " ".join(c.text for c in CLIPS)


@pytest.fixture(scope="module")
def gateways(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[Any]]:
    """Two more gateway replicas on the mesh's Redis, with two client keys."""
    env = mesh.joining_env(
        tmp_path_factory,
        VOICEMESH_GATEWAY_API_KEYS=json.dumps([KEY_A, KEY_B]),
        VOICEMESH_GATEWAY_WYOMING_ENABLED="false",
    )
    started: list[ServiceProcess] = []
    try:
        for name in ("resume-a", "resume-b"):
            started.append(start_routing_gateway(env, tmp_path_factory.mktemp(name)))
        yield started
    finally:
        for gateway in started:
            gateway.stop()


def ws_url(gateway: ServiceProcess) -> str:
    return f"ws://127.0.0.1:{gateway.port}/ws/transcribe"


class Conn:
    """One connection's messages, read in the background."""

    def __init__(self, ws: Any) -> None:
        self.ws = ws
        self.messages: list[dict[str, Any]] = []
        self._arrived = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for raw in self.ws:
                if isinstance(raw, str):
                    self.messages.append(json.loads(raw))
                    self._arrived.set()
        except websockets.ConnectionClosed:
            pass

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [m for m in self.messages if m.get("type") == kind]

    async def first(self, kind: str, timeout_s: float = 20.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout_s):
            while not self.of(kind):
                self._arrived.clear()
                await self._arrived.wait()
        return self.of(kind)[0]

    async def send_audio(self, pcm: bytes, start: int, end: int) -> None:
        step = int(FRAME_S * SAMPLE_RATE) * 2
        for i in range(start * 2, end * 2, step):
            await self.ws.send(pcm[i : min(i + step, end * 2)])
            await asyncio.sleep(FRAME_S / PACE)

    async def finish(self, timeout_s: float = 60.0) -> None:
        await self.ws.send(json.dumps({"type": "stop"}))
        async with asyncio.timeout(timeout_s):
            await self._reader


async def connect(url: str, key: str) -> Conn:
    ws = await websockets.connect(url, additional_headers={"X-API-Key": key}, max_size=None)
    return Conn(ws)


def assert_one_transcript(finals: list[dict[str, Any]], text: str, duration_s: float) -> None:
    """Every final once and in order, continuous times, the words of every utterance."""
    assert [f["index"] for f in finals] == list(range(len(finals))), finals
    starts = [f["start"] for f in finals]
    assert starts == sorted(starts)
    assert finals[-1]["end"] > duration_s - GAP_S - 1.5
    transcript = " ".join(f["text"] for f in finals)
    assert error_rate(text, transcript) <= WER_LIMIT, transcript


async def test_a_session_outlives_its_gateway(gateways: list[ServiceProcess]) -> None:
    pcm, text = utterances()
    total = len(pcm) // 2
    first = await connect(ws_url(gateways[0]), KEY_A)
    ready = await first.first("ready")
    token = ready["resume_token"]
    assert token and token.startswith(ready["session_id"])
    await first.ws.send(json.dumps({"type": "start", "language": "en"}))
    cut = int(total * 0.55)
    await first.send_audio(pcm, 0, cut)
    await asyncio.sleep(1.2)  # one more ack
    os.kill(gateways[0].process.pid, signal.SIGKILL)
    acks = first.of("ack")
    assert acks, first.messages
    acked = acks[-1]["received_s"]
    got = first.of("final")
    assert got, "no final before the gateway died"
    first.ws.transport.abort()

    second = await connect(ws_url(gateways[1]), KEY_A)
    await second.first("ready")
    last = got[-1]["index"]
    await second.ws.send(
        json.dumps({"type": "start", "language": "en", "resume_token": token, "last_final": last})
    )
    resumed = await second.first("resumed")
    assert resumed["session_id"] == ready["session_id"]
    # The gateway kept what it acked (written before each ack), maybe a little more.
    assert acked <= resumed["received_s"] <= cut / SAMPLE_RATE
    await second.send_audio(pcm, round(resumed["received_s"] * SAMPLE_RATE), total)
    await second.finish()
    assert not [m for m in second.messages if m.get("type") == "error"], second.messages
    finals = got + second.of("final")
    assert_one_transcript(finals, text, total / SAMPLE_RATE)
    assert resumed["finals_missing"] == 0


async def test_only_the_key_that_opened_a_session_resumes_it(
    gateways: list[ServiceProcess],
) -> None:
    pcm, _ = utterances()
    alive = [g for g in gateways if g.process.poll() is None]
    url = ws_url(alive[-1])
    owner = await connect(url, KEY_A)
    ready = await owner.first("ready")
    await owner.ws.send(json.dumps({"type": "start", "language": "en"}))
    await owner.send_audio(pcm, 0, int(1.5 * SAMPLE_RATE))
    await owner.first("ack")
    owner.ws.transport.abort()
    ask = {"type": "start", "language": "en", "resume_token": ready["resume_token"]}

    stranger = await connect(url, KEY_B)
    await stranger.first("ready")
    await stranger.ws.send(json.dumps(ask))
    refused = await stranger.first("error")
    assert refused["code"] == "session_not_found" and not refused.get("fatal")
    assert ready["session_id"] not in json.dumps(stranger.of("ready"))
    # The connection goes on as the new session its ready named.
    clip = CLIPS[0]
    clip_pcm = (load_clip_16k(clip.path) * 32767).astype("<i2").tobytes()
    await stranger.send_audio(clip_pcm, 0, len(clip_pcm) // 2)
    await stranger.finish()
    text = " ".join(f["text"] for f in stranger.of("final"))
    assert error_rate(clip.text, text) <= WER_LIMIT, text

    forged = await connect(url, KEY_A)
    await forged.first("ready")
    forged_token = ready["session_id"] + ".not-the-secret"
    await forged.ws.send(json.dumps({**ask, "resume_token": forged_token}))
    assert (await forged.first("error"))["code"] == "session_not_found"
    await forged.ws.close()

    # The owner still can: the stranger's and the forged tries changed nothing.
    back = await connect(f"{url}?resume_token={ready['resume_token']}&last_final=-1", KEY_A)
    resumed = await back.first("resumed")
    assert resumed["session_id"] == ready["session_id"]
    assert resumed["received_s"] >= 1.0
    await back.ws.close()
