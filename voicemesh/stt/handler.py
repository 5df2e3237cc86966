"""One ``/ws/transcribe`` connection of an STT replica: admission, then the session.

A new session is admitted only when the replica can serve it in real time (see
:mod:`voicemesh.stt.load`); otherwise it gets ``busy`` with the reason and a
``retry_after`` before any audio is accepted, and the refusal is logged. A session
the gateway moves here from another replica (``?takeover=1``) is not refused for
load: refusing it would cut a live session.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from fastapi import WebSocket

from voicemesh.audio import AudioStreamDecoder, PcmStreamDecoder, stream_decoder
from voicemesh.errors import ModelUnloaded, VoiceMeshError
from voicemesh.protocol import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    FinalMessage,
    FlushMessage,
    PartialMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
    VadMessage,
)
from voicemesh.stt.state import SttState
from voicemesh.stt.streaming import StreamingSession
from voicemesh.stt.types import check_language
from voicemesh.tasks import stop_task
from voicemesh.wire import ClientMessage, ClientSocket, IdleLimits

_LOGGER = logging.getLogger(__name__)


class StreamHandler:
    """One ``/ws/transcribe`` connection: parse frames, feed the session, send results."""

    def __init__(self, ws: WebSocket, state: SttState) -> None:
        self.state = state
        self.settings = state.settings
        self.session_id = uuid.uuid4().hex[:12]
        idle = IdleLimits(self.settings.idle_ready_s, self.settings.idle_session_s)
        self.client = ClientSocket(ws, metrics=state.metrics, name=self.session_id, idle=idle)
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(
            max_frame_bytes=self.settings.max_frame_bytes
        )
        self.session: StreamingSession | None = None
        self.audio_seen = False
        self.takeover = ws.query_params.get("takeover") == "1"
        """The gateway moves a live session here (failover): not refused for load."""

    async def send(
        self, message: ReadyMessage | PartialMessage | FinalMessage | VadMessage
    ) -> None:
        """Send one message; a final that reached the client is counted."""
        await self.client.send(message)
        if isinstance(message, FinalMessage) and self.client.open:
            self.state.metrics.count("final", "ok")

    def _new_session(self, language: str | None) -> StreamingSession:
        return StreamingSession(
            self.state.scheduler,
            self.send,
            self.state.label,
            self.settings.streaming_config(language),
        )

    async def run(self) -> None:
        """Serve the connection until the client stops or goes away."""
        state = self.state
        if state.model_status != "loaded":
            message = state.not_loaded_message()
            _LOGGER.warning("session %s refused: %s", self.session_id, message)
            await self.client.refuse("model_unloaded", message, CLOSE_TRY_AGAIN)
            return
        refusal = self._refusal()
        if refusal is not None:
            kind, why = refusal
            meter = state.scheduler.meter
            meter.refused[kind] += 1
            state.metrics.count("admission", f"refused_{kind}")
            _LOGGER.warning("session %s refused: %s", self.session_id, why)
            await self.client.refuse(
                "busy",
                f"{why}; try another replica or again later",
                CLOSE_TRY_AGAIN,
                retry_after=meter.policy.retry_after_s,
                reason=kind,
            )
            return
        self.session = self._new_session(None)
        state.sessions[self.session_id] = self.session
        state.scheduler.meter.note_sessions(len(state.sessions))
        state.enders[self.session_id] = self.end_unloaded
        state.metrics.active_sessions.labels(self.settings.kind).inc()
        label = state.label
        await self.send(
            ReadyMessage(
                session_id=self.session_id,
                engine=label.engine,
                device=label.device,
                model=label.model,
                backend=label.backend,
                languages=sorted(getattr(state.transcriber, "languages", ())) or None,
            )
        )
        try:
            await self._receive_loop()
        except ModelUnloaded:
            await self.end_unloaded()
        except Exception:
            _LOGGER.exception("session %s failed", self.session_id)
            await self.client.error(
                "internal_error", "the engine failed on this session", fatal=True
            )
            await self.client.close(CLOSE_INTERNAL)
        finally:
            self.client.open = False
            if self.session is not None:
                self.session.closed = True
            state.sessions.pop(self.session_id, None)
            state.scheduler.meter.note_sessions(len(state.sessions))
            state.enders.pop(self.session_id, None)
            state.metrics.active_sessions.labels(self.settings.kind).dec()

    async def end_unloaded(self) -> None:
        """End the session because the model was unloaded: the gateway moves it elsewhere."""
        await self.client.error(
            "model_unloaded",
            f"model {self.settings.model!r} was unloaded from this replica; "
            "the session must move to another replica",
            fatal=True,
        )
        await self.client.close(CLOSE_TRY_AGAIN)

    def _refusal(self) -> tuple[str, str] | None:
        """Why this session cannot be served in real time here, or None to admit it."""
        state = self.state
        sessions = len(state.sessions)
        if state.draining:
            return "draining", "this replica is draining"
        if sessions >= self.settings.max_sessions:
            return "limit", f"this replica holds its limit of {self.settings.max_sessions} sessions"
        if self.takeover:
            return None  # a live session moving here: refusing it would cut it
        return state.scheduler.meter.refusal(sessions)

    async def _receive_loop(self) -> None:
        """Read the socket in its own task; act on what it read in this one.

        A final decode can wait for a worker for a while on a loaded replica. If that
        wait held up reading, the socket's buffer would fill, the server would stop
        reading it (pings included), and the gateway would take a slow replica for a
        dead one. So the socket is always read and answered, and the audio waits in
        ``inbox`` for the session to catch up.
        """
        inbox: asyncio.Queue[ClientMessage | None] = asyncio.Queue()
        waiting = [0]  # bytes of audio in the inbox, bounded by max_pending_bytes

        async def read() -> None:
            try:
                async for item in self.client.receive():
                    if isinstance(item, bytes):
                        if await self._refused(item, waiting[0]):
                            continue
                        waiting[0] += len(item)
                    inbox.put_nowait(item)
                    if isinstance(item, StopMessage):
                        return
            finally:
                inbox.put_nowait(None)

        reader = asyncio.create_task(read(), name=f"read-{self.session_id}")
        try:
            while (item := await inbox.get()) is not None:
                waiting[0] -= len(item) if isinstance(item, bytes) else 0
                if not self.client.open or await self._handle(item):
                    return  # a client that went away is owed nothing more
        finally:
            await stop_task(reader)

    async def _refused(self, frame: bytes, waiting: int) -> bool:
        """Refuse (``audio_ahead``, not fatal) a frame that would put more than
        ``max_pending_bytes`` of audio in the inbox, ahead of the decoder; True if refused."""
        limit = self.settings.max_pending_bytes
        if waiting + len(frame) <= limit:
            return False
        message = (
            f"{waiting} bytes of audio wait for the decoder, over the limit of {limit};"
            " frame refused: send it again once finals catch up, or at real-time pace"
        )
        await self.client.error("audio_ahead", message, ahead_bytes=waiting, limit_bytes=limit)
        return True

    async def _handle(self, item: ClientMessage) -> bool:
        """Act on one client message; True when the session is over."""
        assert self.session is not None
        if isinstance(item, bytes):
            try:
                audio = self.decoder.decode(item)
            except VoiceMeshError as exc:
                await self.client.error(exc.code, exc.message)
                return False
            self.audio_seen = True
            await self.session.feed(audio)
        elif isinstance(item, StartMessage):
            await self._start(item)
        elif isinstance(item, FlushMessage):
            await self.session.feed(self.decoder.flush())
            await self.session.flush("flush", until=item.until)
        elif isinstance(item, StopMessage):
            await self.session.feed(self.decoder.flush())
            await self.session.close()
            await self.client.close(CLOSE_NORMAL)
            return True
        return False

    async def _start(self, start: StartMessage) -> None:
        if self.audio_seen:
            await self.client.error("bad_message", "'start' must come before the first audio frame")
            return
        try:
            language = check_language(
                self.state.transcriber, start.language or self.settings.language
            )
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        try:
            self.decoder = stream_decoder(
                sample_rate=start.sample_rate,
                encoding=start.encoding,
                channels=start.channels,
                max_frame_bytes=self.settings.max_frame_bytes,
            )
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        assert self.session is not None
        self.session.config.language = language
        self.session.config.tune(
            prompt=start.prompt,
            vad_threshold=start.vad_threshold,
            min_silence_s=start.min_silence_s,
            preroll_s=start.preroll_s,
        )
