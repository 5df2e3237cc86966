"""A client's WebSocket as a VoiceMesh server sees it: :class:`ClientSocket`.

The gateway's streams, the STT service and the detector all talk to their clients
the same way: JSON text messages out, one at a time (several tasks send, so a lock
keeps frames whole); a ``{"type":"error"}`` message before a refusal or a fatal
failure; a close with a code that means something (:mod:`voicemesh.protocol`); and
in, binary frames of audio or text frames holding control messages
(:func:`voicemesh.protocol.parse_control`). A client that went away is not an
error here: sends become no-ops and the receive loop ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel
from starlette.websockets import WebSocket, WebSocketDisconnect

from voicemesh.errors import VoiceMeshError
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    CLOSE_IDLE,
    CLOSE_NORMAL,
    ErrorMessage,
    FlushMessage,
    StartMessage,
    StopMessage,
    parse_control,
)

_LOGGER = logging.getLogger(__name__)

ClientMessage = bytes | StartMessage | FlushMessage | StopMessage
"""What :meth:`ClientSocket.receive` yields: an audio frame or a parsed control message."""
BadMessageHandler = Callable[[VoiceMeshError], Awaitable[None]]


@dataclass(frozen=True)
class IdleLimits:
    """How long a client may send nothing: before its first ``start``/audio, and after that."""

    ready_s: float
    """From the first read (just after ``ready``) to the client's ``start`` or first audio."""
    session_s: float
    """Between any two messages once the session is going (a live mic sends silence)."""


class ClientSocket:
    """An accepted client WebSocket: locked sends, error messages, coded closes, receive loop.

    ``metrics`` (when given) counts every error message sent by its code; ``name``
    (a session id) goes into the log lines. With ``idle`` limits, a client that sends
    nothing for them makes :meth:`receive` end as if it had sent ``stop`` (so the
    session sends the finals it owes), and the normal close becomes an ``idle_timeout``
    error and :data:`~voicemesh.protocol.CLOSE_IDLE`.
    """

    def __init__(
        self,
        ws: WebSocket,
        *,
        metrics: ServiceMetrics | None = None,
        name: str = "",
        idle: IdleLimits | None = None,
    ) -> None:
        self.ws = ws
        self.metrics = metrics
        self.name = name
        self.idle = idle
        self.open = True
        """False once the client is gone or the socket was closed from here."""
        self.idle_reason: str | None = None
        """Why the client was found idle (then the session ends with ``idle_timeout``)."""
        self._started = False
        self._lock = asyncio.Lock()

    async def send_text(self, payload: str) -> None:
        """Send one text frame whole; a client that went away is not an error here."""
        if not self.open:
            return
        async with self._lock:
            try:
                await self.ws.send_text(payload)
            except (WebSocketDisconnect, RuntimeError):
                self.open = False

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        """Send a protocol message (its ``dumps()`` when it has one) or a plain dict as JSON."""
        if isinstance(message, dict):
            await self.send_text(json.dumps(message))
            return
        dumps = getattr(message, "dumps", None)
        await self.send_text(dumps() if callable(dumps) else message.model_dump_json())

    async def error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        """Send a ``{"type":"error"}`` message (the socket stays open unless ``fatal``)."""
        _LOGGER.info("session %s: %s: %s", self.name, code, message)
        if self.metrics is not None:
            self.metrics.error(code)
        payload = ErrorMessage(code=code, message=message, fatal=fatal).model_dump(
            exclude_none=True
        )
        await self.send({**payload, **extra})

    async def close(self, code: int = CLOSE_NORMAL) -> None:
        """Close with ``code``; closing a socket that is already gone is not an error.

        A normal close of a session that ended idle is an ``idle_timeout`` instead."""
        if self.idle_reason is not None and code == CLOSE_NORMAL:
            await self.error("idle_timeout", self.idle_reason, fatal=True)
            code = CLOSE_IDLE
        self.open = False
        with contextlib.suppress(Exception):
            await self.ws.close(code)

    async def refuse(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        """Tell the client why it is turned away (a fatal error message), then close."""
        await self.error(code, message, fatal=True, **extra)
        await self.close(close_code)

    async def receive(
        self,
        on_bad_message: BadMessageHandler | None = None,
    ) -> AsyncIterator[ClientMessage]:
        """Audio frames (``bytes``) and parsed control messages until the client goes away.

        A text frame that is not a valid control message goes to ``on_bad_message``
        (by default: an error message; the loop goes on). The loop ends when the
        client disconnects; the caller ends it on ``stop`` by leaving the loop.
        """
        report = on_bad_message or self._report_bad_message
        async for frame in self.frames():
            if isinstance(frame, bytes):
                self._started = True
                yield frame
                continue
            try:
                control = parse_control(frame)
            except VoiceMeshError as exc:
                await report(exc)
                continue
            self._started = self._started or isinstance(control, StartMessage)
            yield control
        if self.idle_reason is not None:
            yield StopMessage()  # end the session as a stop would: the finals owed go out

    async def frames(self) -> AsyncIterator[bytes | str]:
        """Frames as they come (binary as ``bytes``, text as ``str``) until the client goes away.

        For a protocol with messages of its own (OpenAI Realtime's JSON events);
        :meth:`receive` reads the seed protocol's through it.
        """
        while True:
            limit = self._idle_limit()
            try:
                async with asyncio.timeout(limit):
                    message = await self.ws.receive()
            except TimeoutError:
                self.idle_reason = self._idle_message(limit)
                return
            except (WebSocketDisconnect, RuntimeError):
                message = {"type": "websocket.disconnect"}
            if message["type"] == "websocket.disconnect":
                self.open = False
                return
            data = message.get("bytes")
            yield data if data is not None else str(message.get("text") or "")

    def _idle_limit(self) -> float | None:
        if self.idle is None:
            return None
        return self.idle.session_s if self._started else self.idle.ready_s

    def _idle_message(self, limit: float | None) -> str:
        if self._started:
            return f"no message for {limit:g} s (the idle limit of a session); session ended"
        return f"no 'start' or audio within {limit:g} s of 'ready'; session ended"

    async def _report_bad_message(self, exc: VoiceMeshError) -> None:
        await self.error(exc.code, exc.message)
