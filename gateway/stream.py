"""One client session through the gateway: client <-> STT backend (+ detector).

The session core of every streaming front door (its client: any
:class:`~gateway.session_client.SessionClient`, seed WebSocket or Wyoming). Audio is
normalised once to 16 kHz PCM16, kept since the last final in a :class:`SessionBuffer`
and forwarded to the STT backend and the speech detector. If the backend goes away,
the next one gets the buffer replayed and the client a ``failover``; times stay
continuous (the new backend's clock is shifted by where the buffer starts)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import websockets

from gateway.asr_models import narrow
from gateway.detector_link import DetectorLink, detector_wanted
from gateway.replay import BYTES_PER_SAMPLE, SessionBuffer
from gateway.resume import RESUME_FIELDS, SessionKeeper, resume_session
from gateway.routing import choose_backends, mode_moved
from gateway.session_client import SessionClient
from gateway.state import GatewayState
from gateway.stt_backend import (
    Backend,
    StallWatch,
    open_first_backend,
    refusal_extra,
    report_slow_backend,
    shift_times,
    start_decoder,
)
from voicemesh.audio import AudioStreamDecoder, PcmStreamDecoder, float32_to_pcm16
from voicemesh.errors import EngineUnavailable, VoiceMeshError
from voicemesh.protocol import (
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    SAMPLE_RATE,
    FailoverMessage,
    FlushMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
)
from voicemesh.registry import ReplicaInfo
from voicemesh.tasks import within

__all__ = ["GatewayStream"]

_LOGGER = logging.getLogger(__name__)

REPLAY_CHUNK_BYTES = SAMPLE_RATE * BYTES_PER_SAMPLE // 2  # 0.5 s per replayed frame
STALL_CHECK_S = 0.25


class GatewayStream:
    """Serves one streaming client through an STT backend and the detector; ``model``
    (an id :func:`~gateway.asr_models.check_model` accepted) narrows the routing to it."""

    def __init__(
        self,
        client: SessionClient,
        state: GatewayState,
        session_id: str,
        model: str | None = None,
        *,
        keeper: SessionKeeper | None = None,
    ) -> None:
        self.state = state
        self.settings = state.settings
        self.view = state.view
        self.metrics = state.metrics
        self.session_id = session_id
        self.client = client
        self.model = model
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(
            max_frame_bytes=self.settings.max_frame_bytes
        )
        self.start = StartMessage()
        """The client's ``start`` (language, tuning): every backend of the session gets it."""
        self.buffer = SessionBuffer()
        self.backend: Backend | None = None
        self.failed_backends: set[str] = set()
        self.stall = StallWatch(self.settings.stall_timeout_s, self.settings.max_utterance_s)
        self.detector = DetectorLink(
            self.client,
            self.stall,
            session_id=self.session_id,
            grace_s=self.settings.endpoint_grace_s,
            backstop=self._backstop_flush,
        )
        self._heard_speech_at: float | None = None
        self._slow_reported = False
        self.finals = 0
        self.failovers = 0
        self.audio_seen = False
        self.stopping = False
        self.last_final_end = 0.0
        self._backend_lock = asyncio.Lock()
        self._started = time.perf_counter()
        self.keeper = keeper
        """Keeps the session resumable (the seed WebSocket's sessions; None elsewhere)."""

    # ------------------------------------------------------------------ client side

    async def run(self, resume: StartMessage | None = None) -> None:
        """Open a backend, then pump both directions until the session ends; ``resume``
        (asked for on the URL) carries on a dropped session first, whatever the load."""
        try:
            self.backend = await self._open_backend(0.0, takeover=resume is not None, skip=set())
        except EngineUnavailable as exc:
            extra = refusal_extra(exc, self.session_id, self.state)
            await self.client.refuse(exc.code, exc.message, CLOSE_TRY_AGAIN, **extra)
            return
        if detector_wanted(self.state, self.backend.replica, self.session_id):
            await self.detector.open(self.view, self.settings.connect_timeout_s)
        ready = self.backend.ready
        await self.client.send(
            ReadyMessage(
                session_id=self.session_id,
                engine=ready.get("engine", "?"),
                device=ready.get("device", "?"),
                model=ready.get("model", "?"),
                backend=self.backend.replica.url,
                resume_token=self.keeper.token if self.keeper else None,
            )
        )
        self.metrics.active_sessions.labels("gateway").inc()
        backend_task = asyncio.create_task(self._backend_loop())
        detector_task = asyncio.create_task(self.detector.relay())
        keep = self.keeper.run(self) if self.keeper else asyncio.sleep(0)
        keeper_task = asyncio.create_task(keep)
        try:
            if resume is not None:
                await self._on_start(resume)
            await self._client_loop()
            if self.stopping:
                # Let the backend send its last final and close by itself.
                with contextlib.suppress(TimeoutError):
                    await within(30, asyncio.shield(backend_task))
        finally:
            self.client.open = self.client.open and not self.stopping
            for task in (backend_task, detector_task, keeper_task):
                task.cancel()
            if self.keeper is not None:
                await self.keeper.finish(self, ended=self.stopping)
            if self.backend is not None:
                self.view.release(self.backend.replica)
            await self._close_backends()
            self.metrics.active_sessions.labels("gateway").dec()
            self.state.record_stream(
                self.session_id,
                self.backend.replica if self.backend else None,
                model=self.model,
                latency_ms=round((time.perf_counter() - self._started) * 1000, 1),
                finals=self.finals,
                failovers=self.failovers,
                audio_s=round(self.buffer.total_samples / SAMPLE_RATE, 2),
            )
            if self.stopping:
                await self.client.close(CLOSE_NORMAL)

    async def _client_loop(self) -> None:
        async for item in self.client.receive():
            if isinstance(item, bytes):
                await self._on_audio(item)
            elif isinstance(item, StartMessage):
                await self._on_start(item)
            elif isinstance(item, FlushMessage):
                await self._on_audio_tail()
                await self._to_backend(FlushMessage(reason="client").dumps())
            elif isinstance(item, StopMessage):
                await self._on_audio_tail()
                self.stopping = True
                await self._to_backend(StopMessage().dumps())
                return

    async def _on_start(self, start: StartMessage) -> None:
        if self.audio_seen:
            await self.client.error("bad_message", "'start' must come before the first audio frame")
            return
        asked, start = start, start.model_copy(update=RESUME_FIELDS)
        try:
            self.decoder = start_decoder(start, self.backend, self.settings.max_frame_bytes)
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        self.start = start
        if asked.resume_token is not None:
            async with self._backend_lock:
                if await resume_session(self, asked):
                    return
        await self._to_backend(self.backend_start().dumps())

    async def _on_audio(self, data: bytes) -> None:
        try:
            pcm = self.decoder.to_pcm16_16k(data)
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        self.audio_seen = True
        await self._forward_pcm(pcm)

    async def _on_audio_tail(self) -> None:
        tail = self.decoder.flush()
        if tail.size:
            await self._forward_pcm(float32_to_pcm16(tail))

    async def _forward_pcm(self, pcm: bytes) -> None:
        if refusal := self.buffer.refusal(pcm, self.settings.max_audio_ahead_s):
            return await self.client.error(**refusal)  # refused, not taken: nothing lost
        if not pcm:
            return
        self.buffer.append(pcm)
        await self._to_backend(pcm)
        await self.detector.send(pcm)

    async def _to_backend(self, payload: bytes | str) -> None:
        async with self._backend_lock:
            if self.backend is None:
                return
            try:
                await self.backend.ws.send(payload)
            except websockets.ConnectionClosed:
                # The backend loop fails over and replays this frame from the buffer.
                return

    # ------------------------------------------------------------------ backends

    def backend_start(self) -> StartMessage:
        audio = {"sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le", "channels": 1}
        return self.start.model_copy(update={**audio, "session_id": self.session_id})

    def _candidates(self, exclude: set[str] | None = None) -> list[ReplicaInfo]:
        """STT replicas this session may move to, in routing order."""
        skip = self.failed_backends | (exclude or set())
        mode, gpu_max_load = self.view.mode, self.settings.gpu_max_load
        default = self.view.default_model  # the mesh's default model first when none is named

        def ordered(rs: list[ReplicaInfo]) -> list[ReplicaInfo]:
            return narrow(choose_backends(mode, rs, gpu_max_load=gpu_max_load), self.model, default)

        return [r for r in self.view.route(ordered) if r.instance_id not in skip]

    async def _open_backend(self, offset: float, *, takeover: bool, skip: set[str]) -> Backend:
        """Connect to the first candidate that accepts the session; ``takeover``: a live session
        moving (even with no final yet), which a replica takes whatever its load."""
        backend = await open_first_backend(
            self.view,
            self._candidates(skip),
            self.backend_start(),
            offset,
            takeover=takeover,
            connect_timeout_s=self.settings.connect_timeout_s,
            ping_timeout_s=self.settings.stall_timeout_s,
            failed=self.failed_backends,
            session_id=self.session_id,
        )
        self.metrics.backend_choice.labels(device=backend.replica.device).inc()
        return backend

    async def _backend_loop(self) -> None:
        while True:
            backend = self.backend
            if backend is None:
                return
            reason = await self._pump_backend(backend)
            if reason is None or (self.stopping and not self.buffer.pending_ms):
                if self.stopping:
                    await self.client.close(CLOSE_NORMAL)
                return
            if not await self._switch_backend(backend, reason):
                return

    def _stalled(self) -> bool:
        """Speech is pending and the backend has said nothing for the stall timeout (or
        it sends partials but no final past the longest utterance)."""
        return self.stall.stalled(self._audio_s())

    def _audio_s(self) -> float:
        return self.buffer.total_samples / SAMPLE_RATE

    async def _on_stall(self, backend: Backend) -> str | None:
        """Why the session must move off a stalled backend, or None to wait for it.

        A backend that answers pings but owes text is slow or stuck; another replica
        gets the session if there is one. With nowhere to go, cutting the session
        would lose it for sure, so it stays, and the client is told (once per stall)
        how far behind its backend is.
        """
        if self._candidates(exclude={backend.replica.instance_id}):
            return self.stall.why(self._audio_s())
        if not self._slow_reported:
            self._slow_reported = True
            behind_s = self.stall.behind_s(self._audio_s())
            await report_slow_backend(self.state, self.client, self.session_id, backend, behind_s)
        return None

    async def _pump_backend(self, backend: Backend) -> str | None:
        """Forward backend messages; return why the session must move, or None when done."""
        self.stall.heard()
        try:
            while True:
                try:
                    raw = await within(STALL_CHECK_S, backend.ws.recv())
                    self.stall.heard()
                except TimeoutError:
                    raw = None
                # Checked on messages too: partials alone must not hide a missing final.
                if not self._stalled():
                    self._slow_reported = False
                elif (reason := await self._on_stall(backend)) is not None:
                    return reason
                if raw is None or isinstance(raw, bytes):
                    continue
                message = shift_times(json.loads(raw), backend.offset)
                kind = message.get("type")
                if kind == "ready":
                    continue
                if kind == "error" and message.get("fatal"):
                    return f"backend error: {message.get('message')}"
                self._track_speech(message)
                if kind == "final" and not await self._on_final(message, backend):
                    return None  # resumed elsewhere: the final is the new connection's
                await self.client.send(message)
                if kind == "final" and mode_moved(self.view, backend.replica, self.settings):
                    return "mode_change"
        except websockets.ConnectionClosedError as exc:
            return f"backend connection lost: {exc}"
        except websockets.ConnectionClosedOK:
            pass
        return None if self.stopping else "backend closed the session"

    def _track_speech(self, message: dict[str, Any]) -> None:
        """Remember whether the backend owes us text (drives stall detection)."""
        kind = message.get("type")
        now = self.stall.clock()
        if kind == "vad" and message.get("event") == "speech_start":
            self._heard_speech_at = now
        elif kind == "partial" and self._heard_speech_at is not None:
            self.metrics.first_partial_latency.observe(now - self._heard_speech_at)
            self._heard_speech_at = None
        self.stall.track(message)

    async def _on_final(self, message: dict[str, Any], backend: Backend) -> bool:
        self.last_final_end = float(message.get("end", 0.0))
        self.buffer.drop_until(self.last_final_end)
        message["backend"] = backend.replica.url
        self.finals += 1
        self.metrics.count("final", "ok")
        latency = message.get("latency_ms")
        self.state.stats.record("final", ok=True, latency_ms=latency)
        if isinstance(latency, int | float):
            self.metrics.final_latency.observe(latency / 1000)
        return self.keeper is None or await self.keeper.final(message, self.buffer)

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
                skip = {old.replica.instance_id}
                backend = await self._open_backend(offset, takeover=True, skip=skip)
            except EngineUnavailable as exc:
                if planned:
                    self.view.assign(old.replica)
                    return True  # nowhere better to go: stay where we are
                self.backend = None
                await self.client.refuse("no_backend", f"{reason}; {exc.message}", CLOSE_TRY_AGAIN)
                return False
            audio = self.buffer.replay_since_last_final()
            for i in range(0, len(audio), REPLAY_CHUNK_BYTES):
                await backend.ws.send(audio[i : i + REPLAY_CHUNK_BYTES])
            if self.stopping:
                await backend.ws.send(StopMessage().dumps())
            self.backend = backend
            self.stall.restart(speech_pending=bool(audio))
        with contextlib.suppress(Exception):
            await old.ws.close()
        replayed_ms = round(len(audio) / (SAMPLE_RATE * BYTES_PER_SAMPLE / 1000), 1)
        self.failovers += 0 if planned else 1
        label = "mode_change" if planned else reason.split(":", maxsplit=1)[0]
        self.metrics.count("failover", label)
        self.metrics.failovers.labels(reason=label).inc()
        self.state.events.publish(
            "failover",
            session_id=self.session_id,
            **{"from": old.replica.url},
            to=backend.replica.url,
            reason=reason,
            replayed_ms=replayed_ms,
        )
        _LOGGER.warning(
            "session %s: %s -> %s (%s), replayed %.0f ms",
            self.session_id,
            old.replica.url,
            backend.replica.url,
            reason,
            replayed_ms,
        )
        await self.client.send(
            FailoverMessage(
                **{"from": old.replica.url},
                to=backend.replica.url,
                replayed_ms=replayed_ms,
                reason=reason,
            )
        )
        return True

    # ------------------------------------------------------------------ detector

    async def _backstop_flush(self, speech_end: float) -> None:
        """Flush the engine if it has not finalized the detector's speech end by now."""
        if self.last_final_end >= speech_end or self.stopping:
            return
        _LOGGER.info(
            "session %s: detector endpoint at %.2f s, flushing engine", self.session_id, speech_end
        )
        # ``until`` in the backend's clock: a flush that arrives after the next
        # utterance began must not cut it.
        until = round(speech_end - (self.backend.offset if self.backend else 0.0), 3)
        await self._to_backend(FlushMessage(reason="detector", until=until).dumps())

    async def _close_backends(self) -> None:
        if self.backend is not None:
            with contextlib.suppress(Exception):
                await self.backend.ws.close()
        await self.detector.close()
