"""``WS /v1/realtime``: OpenAI Realtime transcription as a thin adapter over the session core.

The official ``openai`` SDK's realtime client (``client.realtime.connect`` or
``client.beta.realtime.connect`` with ``?intent=transcription``), voice-agent
frameworks and anything else that speaks the Realtime transcription events connect
here with ``Authorization: Bearer <key>``, through the same keys and session limits
as ``/ws/transcribe``. The first appended audio opens one
:class:`~gateway.stream.GatewayStream` (routing, detector, failover with replay,
stall watch, metrics); :class:`RealtimeTranscription` is its client: base64 audio in
becomes the core's frames, a commit or a clear its ``flush``, and the core's messages
become transcription events (:mod:`gateway.realtime_items`). What the core says about
backends (``ready``, ``failover``) is not OpenAI's to hear: a failover only shows as
a wait. Event types of conversations (``response.*``, ``conversation.item.*``) get an
``error`` naming them (:mod:`gateway.realtime_config`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, WebSocket
from pydantic import BaseModel

from gateway import auth
from gateway.asr_models import transcribes_with
from gateway.deps import GatewayStateDep
from gateway.realtime_config import (
    UPDATE_EVENTS,
    TranscriptionConfig,
    audio_of,
    check_locked,
    parse_event,
    pcm_frames,
    read_update,
    session_object,
    unsupported,
)
from gateway.realtime_items import Item, TranscriptionItems, error_event, session_event
from gateway.session_client import ClientInbox, new_session_id
from gateway.state import GatewayState
from gateway.stream import GatewayStream
from voicemesh.errors import BadAudio, BadEvent, FeatureUnavailable, VoiceMeshError
from voicemesh.protocol import CLOSE_IDLE, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, FlushMessage
from voicemesh.wire import ClientMessage, ClientSocket, IdleLimits

_LOGGER = logging.getLogger(__name__)

router = APIRouter()
"""``WS /v1/realtime``."""

INBOX_FRAMES = 256
"""Frames waiting for the core; a full inbox slows the reading of the client's socket."""
SETTLE_TRIES = 3
"""Grace periods a manual commit waits for a final the engine owes before completing anyway."""


def wants_beta(ws: WebSocket) -> bool:
    """The beta spelling (``transcription_session.*``): the beta SDK's ``OpenAI-Beta`` header."""
    return "realtime=v1" in ws.headers.get("openai-beta", "").replace(" ", "")


class RealtimeTranscription:
    """One Realtime transcription session: the client's events in, the core's client out.

    :meth:`run` reads the client's events; the core (started by the first appended
    audio) reads :meth:`receive` and answers through :meth:`send`, :meth:`error`,
    :meth:`refuse` and :meth:`close` (:class:`~gateway.session_client.SessionClient`).
    """

    def __init__(self, ws: WebSocket, state: GatewayState) -> None:
        self.ws = ws
        self.state = state
        self.session_id = new_session_id()
        # A client that sends no event for the idle limit is closed (idle_timeout, 4408).
        idle_s = state.settings.idle_session_s
        self.socket = ClientSocket(
            ws, metrics=state.metrics, name=self.session_id, idle=IdleLimits(idle_s, idle_s)
        )
        self.beta = wants_beta(ws)
        self.config = TranscriptionConfig()
        self.items = TranscriptionItems()
        self.appended_bytes = 0
        self.uncommitted_bytes = 0
        self._carry = b""
        self._inbox = ClientInbox(INBOX_FRAMES)
        self._core: asyncio.Task[None] | None = None
        self._timers: set[asyncio.Task[None]] = set()

    # ------------------------------------------------------------ SessionClient

    @property
    def open(self) -> bool:
        """False once the client is gone or the session closed it."""
        return self.socket.open

    @open.setter
    def open(self, value: bool) -> None:
        self.socket.open = value

    def receive(self) -> AsyncIterator[ClientMessage]:
        """The client's audio and flushes, in order, until it goes away."""
        return self._inbox.items()

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        """One of the core's messages as the transcription events it gives."""
        data = message if isinstance(message, dict) else message.model_dump(by_alias=True)
        if data.get("type") == "error":
            code, text = str(data.get("code")), str(data.get("message"))
            if code == "backend_slow":  # like a failover, the wait is all the client sees
                _LOGGER.info("realtime %s: %s", self.session_id, text)
            else:  # the engine's (a language it does not know): the client's to hear
                await self.socket.send(error_event(code, text))
            return
        for event in self.items.on_message(data):
            await self.socket.send(event)

    async def error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        """An ``error`` event (OpenAI's shape); the session goes on unless ``fatal``."""
        del fatal, extra
        _LOGGER.info("realtime %s: %s: %s", self.session_id, code, message)
        self.state.metrics.error(code)
        await self.socket.send(error_event(code, message))

    async def refuse(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        """Turn the client away: an ``error`` event, then the close."""
        await self.error(code, message, fatal=True, **extra)
        await self.close(close_code)

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Close the client's socket with ``code``."""
        await self.socket.close(code)

    # ------------------------------------------------------------ the client's events

    async def run(self) -> None:
        """Greet the client, then serve its events until it goes away."""
        intent = self.ws.query_params.get("intent")
        if intent not in (None, "transcription"):
            exc = FeatureUnavailable(f"intent {intent!r} is not served: use intent=transcription")
            await self.refuse(exc.code, exc.message, CLOSE_POLICY)
            return
        await self._send_session(
            "transcription_session.created" if self.beta else "session.created"
        )
        try:
            async for frame in self.socket.frames():
                if isinstance(frame, bytes):
                    binary = BadEvent("binary frames are not events: use input_audio_buffer.append")
                    await self.error(binary.code, binary.message)
                    continue
                event: dict[str, Any] = {}
                try:
                    event = parse_event(frame)
                    await self._on_event(event)
                except VoiceMeshError as exc:
                    self.state.metrics.error(exc.code)
                    client_event = event.get("event_id")
                    reply = error_event(
                        exc.code,
                        exc.message,
                        client_event_id=client_event if isinstance(client_event, str) else None,
                    )
                    await self.socket.send(reply)
        finally:
            await self._hang_up()
        if self.socket.idle_reason is not None:
            await self.refuse("idle_timeout", self.socket.idle_reason, CLOSE_IDLE)

    async def _on_event(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in UPDATE_EVENTS:
            wanted = read_update(event, self.config)
            if self._core is not None:
                check_locked(self.config, wanted)
            self.config = wanted
            self.items.vad = wanted.turn_detection is not None
            await self._send_session(kind + "d")
        elif kind == "input_audio_buffer.append":
            await self._append(audio_of(event))
        elif kind == "input_audio_buffer.commit":
            await self._commit()
        elif kind == "input_audio_buffer.clear":
            events = self.items.clear(self._appended_s())
            self.uncommitted_bytes = 0
            await self._flush("clear")
            for reply in events:
                await self.socket.send(reply)
        else:
            raise unsupported(kind)

    async def _send_session(self, kind: str) -> None:
        session = session_object(self.config, self.session_id, beta=self.beta)
        await self.socket.send(session_event(kind, session))

    def _appended_s(self) -> float:
        return self.appended_bytes / 2 / self.config.sample_rate

    async def _append(self, audio: bytes) -> None:
        frames, self._carry = pcm_frames(self._carry, audio, self.state.settings.max_frame_bytes)
        if not frames:
            return
        self._start_core()
        for frame in frames:
            await self._inbox.put(frame)
            self.appended_bytes += len(frame)
            self.uncommitted_bytes += len(frame)

    async def _commit(self) -> None:
        if not self.uncommitted_bytes:
            raise BadAudio(
                "the input audio buffer is empty: append audio before committing",
                code="empty_audio",
            )
        self.uncommitted_bytes = 0
        events, item = self.items.commit(self._appended_s())
        for event in events:
            await self.socket.send(event)
        await self._flush("commit")
        if item is not None:
            self._arm_settle(item)

    async def _flush(self, reason: str) -> None:
        if self._core is not None:
            await self._inbox.put(FlushMessage(reason=reason))

    def _arm_settle(self, item: Item) -> None:
        """Complete a committed turn once no final is owed to it (see ``settle``)."""

        async def settle() -> None:
            for attempt in range(SETTLE_TRIES):
                await asyncio.sleep(self.state.settings.endpoint_grace_s)
                events = self.items.settle(item, force=attempt == SETTLE_TRIES - 1)
                for event in events:
                    await self.socket.send(event)
                if events or item not in self.items.awaiting:
                    return

        task = asyncio.create_task(settle())
        self._timers.add(task)
        task.add_done_callback(self._timers.discard)

    # ------------------------------------------------------------ the core

    def _start_core(self) -> None:
        if self._core is not None:
            return
        self._inbox.put_nowait(self.config.start_message(self.session_id))
        known = self.state.view.snapshot(include_held=True)
        model = (
            self.config.model
            if any(transcribes_with(r, self.config.model) for r in known)
            else None
        )
        stream = GatewayStream(self, self.state, self.session_id, model)
        self._core = asyncio.create_task(self._serve(stream))

    async def _serve(self, stream: GatewayStream) -> None:
        try:
            await stream.run()
        except Exception:
            _LOGGER.exception("realtime %s: the session core failed", self.session_id)
            await self.refuse("internal_error", "the transcription session failed", CLOSE_INTERNAL)

    async def _hang_up(self) -> None:
        """The client is gone: nothing more goes in; wait for the core to let go."""
        for task in list(self._timers):
            task.cancel()
        self._inbox.close()
        if self._core is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._core


@router.websocket("/v1/realtime")
async def realtime(ws: WebSocket, state: GatewayStateDep) -> None:
    """``WS /v1/realtime``: one OpenAI Realtime transcription session."""
    await ws.accept()
    session = RealtimeTranscription(ws, state)
    slot = await auth.claim_session(ws, client=session)
    if slot is None:
        return  # refused: the client got an error event and a close code
    async with slot:
        await session.run()
