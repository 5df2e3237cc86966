"""One client session through the gateway: client <-> STT backend (+ detector).

The gateway normalises the client's audio once (any rate, PCM16 or float32) to
16 kHz PCM16, keeps every frame since the last final in a :class:`SessionBuffer`,
and forwards it to the chosen STT backend and to the speech detector. If the
backend goes away, the next one gets the buffered audio replayed and the client a
``failover`` message; times stay continuous because the new backend's clock is
shifted by where the buffer starts.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from typing import Any

import websockets
from fastapi import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import ClientConnection

from gateway.routing import choose_backends, choose_detector, is_gpu
from gateway.state import GatewayState
from voicemesh.audio import AudioStreamDecoder, PcmStreamDecoder, stream_decoder
from voicemesh.errors import BackendClosed, BackendTimeout, EngineUnavailable, VoiceMeshError
from voicemesh.protocol import (
    ErrorMessage,
    FailoverMessage,
    FlushMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
    VadMessage,
    parse_control,
)
from voicemesh.registry import ReplicaInfo

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000
BYTES_PER_SAMPLE = 2
REPLAY_CHUNK_BYTES = SAMPLE_RATE * BYTES_PER_SAMPLE // 2  # 0.5 s per replayed frame
STALL_CHECK_S = 0.25
CLOSE_NORMAL = 1000
CLOSE_TRY_AGAIN = 1013
_TIME_KEYS = ("start", "end", "t")


def ws_url(http_url: str, path: str) -> str:
    """``http://host:port`` -> ``ws://host:port/path``."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://"):] + path
    if base.startswith("http://"):
        return "ws://" + base[len("http://"):] + path
    return base + path


def shift_times(message: dict[str, Any], offset: float) -> dict[str, Any]:
    """Move a backend message's times by ``offset`` seconds (stream time on the client)."""
    if offset == 0:
        return message
    for key in _TIME_KEYS:
        if isinstance(message.get(key), int | float):
            message[key] = round(message[key] + offset, 3)
    for segment in message.get("segments") or []:
        for key in ("start", "end"):
            segment[key] = round(segment[key] + offset, 3)
        for word in segment.get("words") or []:
            for key in ("start", "end"):
                word[key] = round(word[key] + offset, 3)
    return message


class SessionBuffer:
    """16 kHz PCM16 audio since the last final, for replay to another backend."""

    def __init__(self) -> None:
        self._chunks: deque[tuple[int, bytes]] = deque()  # (start sample, pcm)
        self.start_sample = 0
        self.total_samples = 0

    def append(self, pcm: bytes) -> None:
        """Keep one normalised frame."""
        self._chunks.append((self.total_samples, pcm))
        self.total_samples += len(pcm) // BYTES_PER_SAMPLE

    def drop_until(self, seconds: float) -> None:
        """Forget audio that a final (ending at ``seconds``) has covered."""
        cut = round(seconds * SAMPLE_RATE)
        while self._chunks:
            start, pcm = self._chunks[0]
            end = start + len(pcm) // BYTES_PER_SAMPLE
            if end <= cut:
                self._chunks.popleft()
                continue
            if start < cut:
                offset = (cut - start) * BYTES_PER_SAMPLE
                self._chunks[0] = (cut, pcm[offset:])
            break
        self.start_sample = self._chunks[0][0] if self._chunks else self.total_samples

    def replay_since_last_final(self) -> bytes:
        """All audio not yet covered by a final."""
        return b"".join(pcm for _, pcm in self._chunks)

    @property
    def pending_ms(self) -> float:
        """Duration of the buffered audio."""
        return (self.total_samples - self.start_sample) * 1000 / SAMPLE_RATE


class Backend:
    """An open WebSocket to one STT replica, with the clock offset of its stream."""

    def __init__(self, replica: ReplicaInfo, ws: ClientConnection, ready: dict[str, Any],
                 offset: float) -> None:
        self.replica = replica
        self.ws = ws
        self.ready = ready
        self.offset = offset


class GatewayStream:
    """Serves one ``/ws/transcribe`` client through an STT backend and the detector."""

    def __init__(self, ws: WebSocket, state: GatewayState) -> None:
        self.ws = ws
        self.state = state
        self.settings = state.settings
        self.view = state.view
        self.metrics = state.metrics
        self.session_id = uuid.uuid4().hex[:12]
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(
            max_frame_bytes=self.settings.max_frame_bytes)
        self.language: str | None = None
        self.buffer = SessionBuffer()
        self.backend: Backend | None = None
        self.detector: ClientConnection | None = None
        self.failed_backends: set[str] = set()
        self._speech_since: float | None = None
        self._heard_speech_at: float | None = None
        self._last_backend_message = time.monotonic()
        self.finals = 0
        self.failovers = 0
        self.audio_seen = False
        self.stopping = False
        self.last_final_end = 0.0
        self._send_lock = asyncio.Lock()
        self._backend_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()
        self.client_open = True

    # ------------------------------------------------------------------ client side

    async def send(self, payload: str) -> None:
        """Send one text message to the client; a closed client is not an error here."""
        if not self.client_open:
            return
        async with self._send_lock:
            try:
                await self.ws.send_text(payload)
            except (WebSocketDisconnect, RuntimeError):
                self.client_open = False

    async def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        """Send a WS error message (the socket stays open unless ``fatal``)."""
        _LOGGER.info("session %s: %s: %s", self.session_id, code, message)
        self.metrics.error(code)
        await self.send(ErrorMessage(code=code, message=message, fatal=fatal).dumps())

    async def run(self) -> None:
        """Open a backend, then pump both directions until the session ends."""
        try:
            self.backend = await self._open_backend(offset=0.0)
        except EngineUnavailable as exc:
            await self.error(exc.code, exc.message, fatal=True)
            await self.ws.close(CLOSE_TRY_AGAIN)
            return
        await self._open_detector()
        ready = self.backend.ready
        await self.send(ReadyMessage(
            session_id=self.session_id, engine=ready.get("engine", "?"),
            device=ready.get("device", "?"), model=ready.get("model", "?"),
            backend=self.backend.replica.url,
        ).dumps())
        self.metrics.active_sessions.labels("gateway").inc()
        backend_task = asyncio.create_task(self._backend_loop())
        detector_task = asyncio.create_task(self._detector_loop())
        try:
            await self._client_loop()
            if self.stopping:
                # Let the backend send its last final and close by itself.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(backend_task), timeout=30)
        finally:
            self.client_open = self.client_open and not self.stopping
            for task in (backend_task, detector_task, *self._tasks):
                task.cancel()
            if self.backend is not None:
                self.view.release(self.backend.replica)
            await self._close_backends()
            self.metrics.active_sessions.labels("gateway").dec()
            self.state.stats.record("stream", ok=self.backend is not None)
            self.state.events.publish(
                "request_completed", kind="stream", session_id=self.session_id,
                finals=self.finals, failovers=self.failovers,
                audio_s=round(self.buffer.total_samples / SAMPLE_RATE, 2),
                backend=self.backend.replica.url if self.backend else None)
            if self.stopping:
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_NORMAL)

    async def _client_loop(self) -> None:
        while True:
            try:
                message = await self.ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                await self._on_audio(data)
                continue
            try:
                control = parse_control(message.get("text") or "")
            except VoiceMeshError as exc:
                await self.error(exc.code, exc.message)
                continue
            if isinstance(control, StartMessage):
                await self._on_start(control)
            elif isinstance(control, FlushMessage):
                await self._on_audio_tail()
                await self._to_backend(FlushMessage(reason="client").dumps())
            elif isinstance(control, StopMessage):
                await self._on_audio_tail()
                self.stopping = True
                await self._to_backend(StopMessage().dumps())
                return

    async def _on_start(self, start: StartMessage) -> None:
        if self.audio_seen:
            await self.error("bad_message", "'start' must come before the first audio frame")
            return
        try:
            self.decoder = stream_decoder(
                sample_rate=start.sample_rate, encoding=start.encoding, channels=start.channels,
                max_frame_bytes=self.settings.max_frame_bytes)
        except VoiceMeshError as exc:
            await self.error(exc.code, exc.message)
            return
        self.language = start.language
        await self._to_backend(self._backend_start().dumps())

    async def _on_audio(self, data: bytes) -> None:
        try:
            pcm = self.decoder.to_pcm16_16k(data)
        except VoiceMeshError as exc:
            await self.error(exc.code, exc.message)
            return
        self.audio_seen = True
        await self._forward_pcm(pcm)

    async def _on_audio_tail(self) -> None:
        from voicemesh.audio import float32_to_pcm16

        tail = self.decoder.flush()
        if tail.size:
            await self._forward_pcm(float32_to_pcm16(tail))

    async def _forward_pcm(self, pcm: bytes) -> None:
        if not pcm:
            return
        self.buffer.append(pcm)
        await self._to_backend(pcm)
        if self.detector is not None:
            try:
                await self.detector.send(pcm)
            except websockets.ConnectionClosed:
                _LOGGER.warning("session %s: detector went away; engine VAD endpoints alone",
                                self.session_id)
                self.detector = None

    async def _to_backend(self, payload: bytes | str) -> None:
        async with self._backend_lock:
            if self.backend is None:
                return
            try:
                await self.backend.ws.send(payload)
            except websockets.ConnectionClosed:
                # The backend loop sees the close and fails over; the frame is in the
                # session buffer and will be replayed.
                return

    # ------------------------------------------------------------------ backends

    def _backend_start(self) -> StartMessage:
        return StartMessage(sample_rate=SAMPLE_RATE, encoding="pcm_s16le",
                            language=self.language, session_id=self.session_id)

    async def _open_backend(self, offset: float, *, exclude: set[str] | None = None) -> Backend:
        """Connect to the first candidate that accepts the session."""
        skip = self.failed_backends | (exclude or set())
        candidates = [
            r for r in choose_backends(self.view.mode, self.view.snapshot(),
                                       gpu_max_load=self.settings.gpu_max_load)
            if r.instance_id not in skip
        ]
        last_error = "no STT replica is registered"
        for replica in candidates:
            # Reserve first: sessions opening at the same moment must see this one.
            self.view.assign(replica)
            try:
                backend = await self._connect(replica, offset)
            except EngineUnavailable as exc:
                self.view.release(replica)
                last_error = exc.message
                self.failed_backends.add(replica.instance_id)
                self.view.mark_failed(replica)
                _LOGGER.warning("session %s: %s refused: %s", self.session_id, replica.url,
                                exc.message)
                continue
            self._count_backend_choice(replica)
            return backend
        raise EngineUnavailable(f"no STT backend could take the session: {last_error}",
                                code="no_backend")

    def _count_backend_choice(self, replica: ReplicaInfo) -> None:
        choice = getattr(self.metrics, "backend_choice", None)
        if choice is not None:
            choice.labels(device=replica.device).inc()

    async def _connect(self, replica: ReplicaInfo, offset: float) -> Backend:
        url = ws_url(replica.url, "/ws/transcribe")
        timeout = self.settings.connect_timeout_s
        try:
            # Pings catch a frozen or unplugged backend even while nobody speaks.
            ws = await asyncio.wait_for(
                websockets.connect(url, max_size=None, open_timeout=timeout,
                                   ping_interval=1.0, ping_timeout=self.settings.stall_timeout_s),
                timeout,
            )
        except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
            raise BackendClosed(f"cannot connect to {url}: {exc}") from exc
        try:
            raw = await asyncio.wait_for(ws.recv(), timeout)
            ready = json.loads(raw)
            if ready.get("type") != "ready":
                raise BackendClosed(f"{url} refused the session: {ready.get('message', raw)}")
            await ws.send(self._backend_start().dumps())
        except (websockets.ConnectionClosed, TimeoutError, ValueError) as exc:
            await ws.close()
            raise BackendTimeout(f"{url} did not get ready: {exc}") from exc
        except BackendClosed:
            await ws.close()
            raise
        return Backend(replica, ws, ready, offset)

    async def _backend_loop(self) -> None:
        while True:
            backend = self.backend
            if backend is None:
                return
            reason = await self._pump_backend(backend)
            if reason is None or (self.stopping and not self.buffer.pending_ms):
                if self.stopping:
                    self.client_open = False
                    with contextlib.suppress(Exception):
                        await self.ws.close(CLOSE_NORMAL)
                return
            if not await self._switch_backend(backend, reason):
                return

    def _stalled(self) -> bool:
        """Speech is pending and the backend has said nothing for the stall timeout."""
        if self._speech_since is None:
            return False
        quiet = time.monotonic() - max(self._last_backend_message, self._speech_since)
        return quiet > self.settings.stall_timeout_s

    async def _pump_backend(self, backend: Backend) -> str | None:
        """Forward backend messages; return why the session must move, or None when done."""
        self._last_backend_message = time.monotonic()
        try:
            while True:
                try:
                    raw = await asyncio.wait_for(backend.ws.recv(), STALL_CHECK_S)
                except TimeoutError:
                    if self._stalled():
                        return (f"stalled: no message for {self.settings.stall_timeout_s:.0f} s "
                                "while speech was pending")
                    continue
                self._last_backend_message = time.monotonic()
                if isinstance(raw, bytes):
                    continue
                message = shift_times(json.loads(raw), backend.offset)
                kind = message.get("type")
                if kind == "ready":
                    continue
                if kind == "error" and message.get("fatal"):
                    return f"backend error: {message.get('message')}"
                self._track_speech(message)
                if kind == "final":
                    self._on_final(message, backend)
                await self.send(json.dumps(message))
                if kind == "final" and self._mode_moved(backend):
                    return "mode_change"
        except websockets.ConnectionClosedError as exc:
            return f"backend connection lost: {exc}"
        except websockets.ConnectionClosedOK:
            pass
        return None if self.stopping else "backend closed the session"

    def _track_speech(self, message: dict[str, Any]) -> None:
        """Remember whether the backend owes us text (drives stall detection)."""
        kind = message.get("type")
        if kind == "vad" and message.get("event") == "speech_start":
            self._heard_speech_at = time.monotonic()
        elif kind == "partial" and self._heard_speech_at is not None:
            histogram = getattr(self.metrics, "first_partial_latency", None)
            if histogram is not None:
                histogram.observe(time.monotonic() - self._heard_speech_at)
            self._heard_speech_at = None
        if kind == "partial" or (kind == "vad" and message.get("event") == "speech_start"):
            if self._speech_since is None:
                self._speech_since = time.monotonic()
        elif kind == "final" or (kind == "vad" and message.get("event") == "speech_end"):
            self._speech_since = None

    def _on_final(self, message: dict[str, Any], backend: Backend) -> None:
        self.last_final_end = float(message.get("end", 0.0))
        self.buffer.drop_until(self.last_final_end)
        message["backend"] = backend.replica.url
        self.finals += 1
        self.metrics.count("final", "ok")
        latency = message.get("latency_ms")
        self.state.stats.record("final", ok=True, latency_ms=latency)
        histogram = getattr(self.metrics, "final_latency", None)
        if histogram is not None and isinstance(latency, int | float):
            histogram.observe(latency / 1000)

    def _mode_moved(self, backend: Backend) -> bool:
        """After a final: does the routing mode now prefer the other kind of device?"""
        preferred = choose_backends(self.view.mode, self.view.snapshot(),
                                    gpu_max_load=self.settings.gpu_max_load)
        return bool(preferred) and is_gpu(preferred[0]) != is_gpu(backend.replica)

    async def _switch_backend(self, old: Backend, reason: str) -> bool:
        """Move the session to the next backend and replay the audio since the last final.

        ``reason`` ``mode_change`` is a planned move at an utterance boundary; anything
        else is a failure, and the old backend is kept out of routing for a while.
        """
        planned = reason == "mode_change"
        if not planned:
            self.failed_backends.add(old.replica.instance_id)
            self.view.mark_failed(old.replica)
            # A frozen backend stops reading: a send to it may be blocked on TCP
            # backpressure while holding the backend lock. Cutting the connection
            # releases it (the frame is already in the session buffer).
            old.ws.transport.abort()
        self.view.release(old.replica)
        async with self._backend_lock:
            offset = self.buffer.start_sample / SAMPLE_RATE
            try:
                backend = await self._open_backend(offset, exclude={old.replica.instance_id})
            except EngineUnavailable as exc:
                if planned:
                    self.view.assign(old.replica)
                    return True  # nowhere better to go: stay where we are
                self.backend = None
                await self.error("no_backend", f"{reason}; {exc.message}", fatal=True)
                self.client_open = False
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_TRY_AGAIN)
                return False
            audio = self.buffer.replay_since_last_final()
            for i in range(0, len(audio), REPLAY_CHUNK_BYTES):
                await backend.ws.send(audio[i:i + REPLAY_CHUNK_BYTES])
            if self.stopping:
                await backend.ws.send(StopMessage().dumps())
            self.backend = backend
            self._speech_since = time.monotonic() if audio else None
        with contextlib.suppress(Exception):
            await old.ws.close()
        replayed_ms = round(len(audio) / (SAMPLE_RATE * BYTES_PER_SAMPLE / 1000), 1)
        self.failovers += 0 if planned else 1
        label = "mode_change" if planned else reason.split(":", maxsplit=1)[0]
        self.metrics.count("failover", label)
        counter = getattr(self.metrics, "failovers", None)
        if counter is not None:
            counter.labels(reason=label).inc()
        self.state.events.publish("failover", session_id=self.session_id,
                                  **{"from": old.replica.url}, to=backend.replica.url,
                                  reason=reason, replayed_ms=replayed_ms)
        _LOGGER.warning("session %s: %s -> %s (%s), replayed %.0f ms", self.session_id,
                        old.replica.url, backend.replica.url, reason, replayed_ms)
        await self.send(FailoverMessage(**{"from": old.replica.url}, to=backend.replica.url,
                                        replayed_ms=replayed_ms, reason=reason).dumps())
        return True

    # ------------------------------------------------------------------ detector

    async def _open_detector(self) -> None:
        if not self.settings.use_detector:
            return
        for replica in choose_detector(self.view.snapshot()):
            try:
                self.detector = await asyncio.wait_for(
                    websockets.connect(ws_url(replica.url, "/ws/detect"), max_size=None),
                    self.settings.connect_timeout_s,
                )
                return
            except (OSError, websockets.InvalidHandshake, TimeoutError) as exc:
                _LOGGER.warning("session %s: detector %s unavailable: %s", self.session_id,
                                replica.url, exc)
                self.view.mark_failed(replica)

    async def _detector_loop(self) -> None:
        detector = self.detector
        if detector is None:
            return
        try:
            async for raw in detector:
                message = json.loads(raw)
                kind = message.get("type")
                if kind == "speech_start":
                    await self.send(VadMessage(event="speech_start", t=message["t"],
                                               source="detector").dumps())
                elif kind == "speech_end":
                    await self.send(VadMessage(
                        event="speech_end", t=message["t"], source="detector",
                        confirmed=message.get("confirmed"), text=message.get("text"),
                    ).dumps())
                    if message.get("confirmed"):
                        self._schedule_backstop_flush(float(message["t"]))
        except websockets.ConnectionClosed:
            _LOGGER.warning("session %s: detector closed; engine VAD endpoints alone",
                            self.session_id)
        self.detector = None

    def _schedule_backstop_flush(self, speech_end: float) -> None:
        """Flush the engine if it has not finalized this speech within the grace time."""

        async def backstop() -> None:
            await asyncio.sleep(self.settings.endpoint_grace_s)
            if self.last_final_end < speech_end and not self.stopping:
                _LOGGER.info("session %s: detector endpoint at %.2f s, flushing engine",
                             self.session_id, speech_end)
                # ``until`` in the backend's clock: a flush that arrives after the
                # next utterance began must not cut it.
                until = round(speech_end - (self.backend.offset if self.backend else 0.0), 3)
                await self._to_backend(FlushMessage(reason="detector", until=until).dumps())

        task = asyncio.create_task(backstop())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _close_backends(self) -> None:
        for ws in (self.backend.ws if self.backend else None, self.detector):
            if ws is not None:
                with contextlib.suppress(Exception):
                    await ws.close()

