"""Stall detection in the gateway's streams, against fake STT backends in-process.

The gateway runs on a real uvicorn on loopback with a real Redis; the backends are
fakes because the point is a backend that misbehaves in one exact way (silent from
the start, silent after a partial, partials and never a final, alive but slow),
which a real engine cannot be made to do on cue. Each fake is a small WebSocket
server speaking the STT service's side of ``/ws/transcribe`` (a ``ready`` message,
then ``partial``/``final`` messages as it chooses) and registered the way a replica
registers itself, through ``RegistryClient``. A fake detector speaks ``/ws/detect``.

A fake answers pings (the websockets library does that for it), so what catches it
is the gateway's stall watch (``GatewayStream._stalled``), and each test checks the
failover's ``reason`` (or that there is none).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis
import uvicorn
import websockets
from websockets.asyncio.server import Server, ServerConnection, serve

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import RedisServer, free_port
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.registry import RegistryClient, ReplicaInfo, ReplicaLoad

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

# A database of its own on the shared test Redis (the admin tests use 7, the mesh 0).
STALL_TEST_DB = 6
STALL_TIMEOUT_S = 1.0
FRAME_S = 0.05
FRAME = b"\0\0" * int(SAMPLE_RATE * FRAME_S)


class FakeSttBackend:
    """A fake STT replica: the service's ``/ws/transcribe`` side, driven by ``on_audio``.

    Subclasses decide what to send as audio arrives; every connection's audio is
    counted in seconds, so a fake can speak at a given point of the stream.
    """

    def __init__(self, name: str, *, queue: int = 0, sessions: int = 0) -> None:
        self.name = name
        self.port = free_port()
        self.queue = queue
        self.sessions = sessions
        self.audio_s: list[float] = []
        """Seconds of audio each connection received (replays included)."""
        self._server: Server | None = None

    @property
    def url(self) -> str:
        """The replica's base URL, as it registers."""
        return f"http://127.0.0.1:{self.port}"

    def replica(self) -> ReplicaInfo:
        """The registry entry this fake writes, as a real replica's heartbeat does."""
        now = time.time()
        return ReplicaInfo(
            instance_id=self.name,
            kind="stt_cpu_ws",
            url=self.url,
            device="cpu",
            model="fake",
            engine="fake",
            capabilities=["stream", "transcribe"],
            load=ReplicaLoad(active_sessions=self.sessions, queue=self.queue, max_sessions=8),
            started_at=now - 10,
            updated_at=now,
        )

    async def start(self) -> None:
        """Listen on loopback."""
        self._server = await serve(self._session, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Close every connection and stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, ws: ServerConnection) -> None:
        index = len(self.audio_s)
        self.audio_s.append(0.0)
        await ws.send(
            json.dumps(
                {
                    "type": "ready",
                    "session_id": f"{self.name}-{index}",
                    "engine": "fake",
                    "device": "cpu",
                    "model": "fake",
                }
            )
        )
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    self.audio_s[index] += len(message) / 2 / SAMPLE_RATE
                    await self.on_audio(ws, self.audio_s[index])
                elif json.loads(message).get("type") == "stop":
                    await ws.close()  # as the service does once its last final is out

    async def on_audio(self, ws: ServerConnection, audio_s: float) -> None:
        """React to audio (``audio_s``: seconds received on this connection so far)."""


class FakeSilentBackend(FakeSttBackend):
    """Says ``ready`` and then nothing at all, whatever it hears."""


class FakeSilentAfterPartialBackend(FakeSttBackend):
    """Sends one partial once 0.3 s of audio is in, then nothing more."""

    async def on_audio(self, ws: ServerConnection, audio_s: float) -> None:
        if audio_s >= 0.3 and not getattr(ws, "partial_sent", False):
            ws.partial_sent = True  # type: ignore[attr-defined]
            await ws.send(partial(0.0, audio_s))


class FakePartialsOnlyBackend(FakeSttBackend):
    """Sends a partial of the same utterance every 0.2 s of audio, and never a final."""

    async def on_audio(self, ws: ServerConnection, audio_s: float) -> None:
        if round(audio_s / FRAME_S) % 4 == 0:
            await ws.send(partial(0.0, audio_s))


class FakeAnsweringBackend(FakeSttBackend):
    """A healthy backend, as far as these tests need: a partial every 0.2 s of audio."""

    async def on_audio(self, ws: ServerConnection, audio_s: float) -> None:
        if round(audio_s / FRAME_S) % 4 == 0:
            await ws.send(partial(0.0, audio_s))


class FakeFullBackend(FakeAnsweringBackend):
    """At capacity, as a real replica whose finals queue: it refuses a new session
    ``busy`` (before ``ready``, with ``retry_after``) but takes a live session the gateway
    moves here (``?takeover=1``), as :class:`voicemesh.stt.handler.StreamHandler` does."""

    def __init__(self, name: str) -> None:
        super().__init__(name, sessions=2)
        self.asked: list[str] = []
        """Each connection's request path, query included."""

    def replica(self) -> ReplicaInfo:
        entry = super().replica()  # and its heartbeat says so
        return entry.model_copy(update={"load": entry.load.model_copy(update={"admitting": False})})

    async def _session(self, ws: ServerConnection) -> None:
        path = ws.request.path if ws.request is not None else ""
        self.asked.append(path)
        if "takeover=1" not in path:
            refusal = {"type": "error", "code": "busy", "fatal": True, "retry_after": 1}
            refusal["message"] = "finals wait 1.2 s for a decode worker here: at capacity"
            await ws.send(json.dumps(refusal))
            await ws.close(1013)
            return
        await super()._session(ws)


class FakeHungEntryBackend(FakeAnsweringBackend):
    """Answers, but its registry entry says it beats every 0.1 s and is written once: what
    the gateway sees of a SIGSTOPped replica whose entry's TTL has not run out."""

    def replica(self) -> ReplicaInfo:
        return super().replica().model_copy(update={"heartbeat_interval_s": 0.1})


class FakeSlowBackend(FakeSttBackend):
    """Alive but slow: a partial, then nothing for ``lag_s``, then the final.

    It answers pings all along (its event loop is free; only its "decoder" lags).
    """

    def __init__(self, name: str, *, lag_s: float, queue: int) -> None:
        super().__init__(name, queue=queue)
        self.lag_s = lag_s
        self.final_sent = asyncio.Event()

    async def on_audio(self, ws: ServerConnection, audio_s: float) -> None:
        if audio_s >= 0.3 and not getattr(ws, "started", False):
            ws.started = True  # type: ignore[attr-defined]
            await ws.send(partial(0.0, audio_s))
            asyncio.get_running_loop().call_later(
                self.lag_s, lambda: asyncio.ensure_future(self._final(ws, audio_s))
            )

    async def _final(self, ws: ServerConnection, end: float) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(
                json.dumps(
                    {
                        "type": "final",
                        "utterance_id": 1,
                        "text": "late but right",
                        "segments": [],
                        "start": 0.0,
                        "end": round(end, 3),
                        "engine": "fake",
                        "device": "cpu",
                        "model": "fake",
                        "latency_ms": self.lag_s * 1000,
                        "reason": "endpoint",
                    }
                )
            )
            self.final_sent.set()


class FakeDetector:
    """A fake ``/ws/detect``: ``speech_start`` once 0.2 s of audio is in, nothing else."""

    def __init__(self) -> None:
        self.port = free_port()
        self._server: Server | None = None

    def replica(self) -> ReplicaInfo:
        """The detector's registry entry."""
        now = time.time()
        return ReplicaInfo(
            instance_id="fake-detector",
            kind="stt_tiny_ws",
            url=f"http://127.0.0.1:{self.port}",
            model="fake",
            capabilities=["detect"],
            started_at=now - 10,
            updated_at=now,
        )

    async def start(self) -> None:
        """Listen on loopback."""
        self._server = await serve(self._session, "127.0.0.1", self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _session(self, ws: ServerConnection) -> None:
        heard = 0.0
        started = False
        with contextlib.suppress(websockets.ConnectionClosed):
            async for message in ws:
                if isinstance(message, bytes):
                    heard += len(message) / 2 / SAMPLE_RATE
                    if heard >= 0.2 and not started:
                        started = True
                        await ws.send(json.dumps({"type": "speech_start", "t": 0.05}))


def partial(start: float, end: float) -> str:
    """A partial of utterance 1 over ``start``-``end``."""
    return json.dumps(
        {
            "type": "partial",
            "utterance_id": 1,
            "text": "so far",
            "stable_text": "",
            "start": round(start, 3),
            "end": round(end, 3),
        }
    )


@pytest.fixture
def redis_url(redis_server: RedisServer) -> AsyncIterator[str]:
    """An empty Redis database of these tests."""
    url = f"{redis_server.url.rsplit('/', 1)[0]}/{STALL_TEST_DB}"
    plain = redis.Redis.from_url(url)
    plain.flushdb()
    yield url  # type: ignore[misc]
    plain.flushdb()
    plain.close()


@contextlib.asynccontextmanager
async def mesh(
    redis_url: str, *fakes: FakeSttBackend | FakeDetector, **overrides: Any
) -> AsyncIterator[str]:
    """The fakes listening and registered, and a gateway on uvicorn; yields its WS URL."""
    registry = RegistryClient(redis_url, ttl_s=60.0)
    for fake in fakes:
        await fake.start()
        await registry.register(fake.replica())
    await registry.close()
    values: dict[str, Any] = {
        "redis_url": redis_url,
        "registry_refresh_s": 0.1,
        "probe_interval_s": 0,
        "use_detector": any(isinstance(f, FakeDetector) for f in fakes),
        "stall_timeout_s": STALL_TIMEOUT_S,
        "connect_timeout_s": 2.0,
        **overrides,
    }
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(GatewaySettings(**values)), host="127.0.0.1", port=port, log_level="warning"
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            assert not task.done(), "the gateway did not start"
            await asyncio.sleep(0.02)
        yield f"ws://127.0.0.1:{port}/ws/transcribe"
    finally:
        server.should_exit = True
        try:
            await asyncio.wait_for(task, 15)  # a hang here names itself, not the test
        finally:
            for fake in fakes:
                await asyncio.wait_for(fake.stop(), 15)


async def stream(url: str, seconds: float, *, until: str | None = None) -> list[dict[str, Any]]:
    """Stream silence at real-time pace for ``seconds`` (or until a message of type
    ``until`` arrives), then ``stop``; every message the client got, in order."""
    messages: list[dict[str, Any]] = []
    async with asyncio.timeout(seconds + 30), websockets.connect(url) as ws:
        messages.append(json.loads(await ws.recv()))
        assert messages[0]["type"] == "ready", messages
        got_it = asyncio.Event()

        async def read() -> None:
            with contextlib.suppress(websockets.ConnectionClosed):
                async for raw in ws:
                    messages.append(json.loads(raw))
                    if messages[-1].get("type") == until:
                        got_it.set()

        reader = asyncio.create_task(read())
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not got_it.is_set():
            await ws.send(FRAME)
            await asyncio.sleep(FRAME_S)
        with contextlib.suppress(websockets.ConnectionClosed):
            await ws.send(json.dumps({"type": "stop"}))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, 5)
        reader.cancel()
    return messages


def of_type(messages: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The messages of one type."""
    return [m for m in messages if m.get("type") == kind]


async def test_a_backend_silent_from_the_start_is_failed_over(redis_url: str) -> None:
    silent = FakeSilentBackend("a-silent")
    spare = FakeAnsweringBackend("b-spare", sessions=2)  # more loaded: tried second
    async with mesh(redis_url, silent, spare, FakeDetector()) as url:
        messages = await stream(url, 8.0, until="failover")
    assert messages[0]["backend"] == silent.url
    failovers = of_type(messages, "failover")
    assert len(failovers) == 1, messages
    assert (failovers[0]["from"], failovers[0]["to"]) == (silent.url, spare.url)
    assert failovers[0]["reason"].startswith("stalled: no message"), failovers[0]
    assert failovers[0]["replayed_ms"] > 0
    assert spare.audio_s and spare.audio_s[0] > 0  # the replayed audio reached the spare


async def test_a_stalled_session_with_no_final_yet_moves_to_a_full_replica(
    redis_url: str,
) -> None:
    """A session that stalls before its first final is a live session all the same: the
    replica it moves to takes it though it refuses new sessions for load (in the fault
    tier a slow replica's session was cut ``no_backend`` here, its spare being full)."""
    silent = FakeSilentBackend("a-silent")
    full = FakeFullBackend("b-full")
    async with mesh(redis_url, silent, full, FakeDetector()) as url:
        messages = await stream(url, 8.0, until="failover")
    assert messages[0]["backend"] == silent.url
    assert not of_type(messages, "error"), messages
    failovers = of_type(messages, "failover")
    assert len(failovers) == 1, messages
    assert (failovers[0]["from"], failovers[0]["to"]) == (silent.url, full.url)
    assert full.asked == ["/ws/transcribe?takeover=1"], full.asked  # asked as a takeover
    assert full.audio_s and full.audio_s[-1] > 0  # the replayed audio reached it


async def test_a_new_session_is_refused_busy_rather_than_sent_to_a_hung_replica(
    redis_url: str,
) -> None:
    full = FakeFullBackend("a-full")
    hung = FakeHungEntryBackend("b-hung", sessions=0)  # its last entry: idle, admitting
    async with mesh(redis_url, full, hung) as url:
        await asyncio.sleep(1.5)  # the hung entry misses its beats in the gateway's eyes
        async with asyncio.timeout(20), websockets.connect(url) as ws:
            first = json.loads(await ws.recv())
        # A live replica at capacity: the client is told when to retry...
        assert (first["type"], first.get("code")) == ("error", "busy"), first
        assert first["retry_after"] > 0, first
        assert full.asked == ["/ws/transcribe"]
        # ...and the replica that stopped beating was not given a new session.
        assert hung.audio_s == [], hung.audio_s


async def test_a_backend_silent_after_a_partial_is_failed_over(redis_url: str) -> None:
    stuck = FakeSilentAfterPartialBackend("a-stuck")
    spare = FakeAnsweringBackend("b-spare", sessions=2)
    async with mesh(redis_url, stuck, spare) as url:
        messages = await stream(url, 8.0, until="failover")
    assert messages[0]["backend"] == stuck.url
    assert of_type(messages, "partial"), messages  # the one partial came through first
    failovers = of_type(messages, "failover")
    assert len(failovers) == 1, messages
    assert (failovers[0]["from"], failovers[0]["to"]) == (stuck.url, spare.url)
    assert failovers[0]["reason"].startswith("stalled: no message"), failovers[0]


async def test_a_backend_sending_partials_but_never_a_final_is_failed_over(
    redis_url: str,
) -> None:
    chatty = FakePartialsOnlyBackend("a-chatty")
    spare = FakeAnsweringBackend("b-spare", sessions=2)
    # Engines end an utterance by 29 s at most; 1 s here keeps the test short.
    async with mesh(redis_url, chatty, spare, max_utterance_s=1.0) as url:
        messages = await stream(url, 10.0, until="failover")
    failovers = of_type(messages, "failover")
    assert len(failovers) == 1, messages
    assert (failovers[0]["from"], failovers[0]["to"]) == (chatty.url, spare.url)
    assert failovers[0]["reason"].startswith("stalled: partials but no final"), failovers[0]
    before = [m for m in messages[: messages.index(failovers[0])] if m["type"] == "partial"]
    assert len(before) >= 5, messages  # it kept talking all along: not a silent backend


async def test_an_alive_but_slow_only_backend_is_waited_for_and_its_delay_reported(
    redis_url: str,
) -> None:
    slow = FakeSlowBackend("a-slow", lag_s=3 * STALL_TIMEOUT_S, queue=5)
    async with mesh(redis_url, slow) as url:
        messages = await stream(url, 6.0, until="final")
    assert slow.final_sent.is_set()
    assert of_type(messages, "failover") == [], messages
    errors = of_type(messages, "error")
    assert [e["code"] for e in errors] == ["backend_slow"], messages
    slow_report = errors[0]
    assert slow_report["fatal"] is False
    assert slow_report["backend"] == slow.url and slow_report["queue"] == 5
    assert slow_report["behind_s"] >= STALL_TIMEOUT_S
    finals = of_type(messages, "final")
    assert [f["text"] for f in finals] == ["late but right"], messages
    assert messages.index(slow_report) < messages.index(finals[0])


async def test_a_finalless_only_backend_is_reported_once_not_cut(redis_url: str) -> None:
    chatty = FakePartialsOnlyBackend("a-chatty")
    async with mesh(redis_url, chatty, max_utterance_s=1.0) as url:
        messages = await stream(url, 4.0)
    assert of_type(messages, "failover") == [], messages
    errors = of_type(messages, "error")
    assert [e["code"] for e in errors] == ["backend_slow"], errors  # once, though it talks on
    assert errors[0]["behind_s"] >= STALL_TIMEOUT_S
    assert len(of_type(messages, "partial")) >= 10
