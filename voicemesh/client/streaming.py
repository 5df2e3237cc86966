"""Streaming transcription over ``WS /ws/transcribe``, surviving a dropped connection.

:class:`TranscriptionStream` sends 16 kHz PCM16 frames and yields the server's messages
as typed events. Failover between STT replicas is the gateway's job: it shows up here
as a ``failover`` event and the transcript goes on. A dropped connection is the
client's: it reconnects with backoff and sends the new session the audio no final has
covered yet, shifting the new session's times so they stay continuous.

A reconnect resumes the server session (:mod:`voicemesh.client.resume`): the client
sends the audio after what the gateway holds and gets the finals it missed, on the same
session clock. When the session cannot be resumed (it expired), the new connection is a
new session: the client sends it the audio no final covered and shifts its times. Either
way a :class:`~voicemesh.client.models.ReconnectEvent` says what happened: whether the
session was resumed, the partial in progress (decoded again) and any audio that had
already left the replay buffer (never transcribed).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import numpy as np
import websockets
from pydantic import ValidationError

from voicemesh.audio import float32_to_pcm16
from voicemesh.client.errors import error_from_ws
from voicemesh.client.models import ReconnectEvent, StreamEvent
from voicemesh.client.replay import Backoff, SlidingBuffer
from voicemesh.client.resume import ResumeState, open_session
from voicemesh.errors import ConnectionLost, StreamLostError, TransportError
from voicemesh.protocol import SAMPLE_RATE, SERVER_MESSAGE, ReadyMessage
from voicemesh.tasks import stop_task, within

_LOGGER = logging.getLogger(__name__)

REPLAY_CHUNK_S = 1.0
"""Replayed audio goes out in frames of this length (well under the 1 MiB frame limit)."""
DROPPED_CLOSE_CODES = frozenset({1001, 1006, 1011, 1012})
"""Close codes after which the client reconnects: going away, no close frame (a network
drop), a server failure, a restart."""
TIMED_KEYS = ("start", "end", "t")


def shift_times(message: dict[str, Any], offset: float) -> None:
    """Add ``offset`` seconds to every stream time of a server message (segments too)."""
    if not offset:
        return
    for key in TIMED_KEYS:
        if isinstance(message.get(key), int | float):
            message[key] = round(message[key] + offset, 3)
    for segment in message.get("segments") or []:
        shift_times(segment, offset)
        for word in segment.get("words") or []:
            shift_times(word, offset)


class TranscriptionStream:
    """One streaming transcription: audio blocks in, typed events out, reconnecting."""

    def __init__(
        self,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        language: str | None = None,
        backoff: Backoff | None = None,
        buffer_s: float = 60.0,
        open_timeout_s: float = 30.0,
        final_timeout_s: float = 120.0,
    ) -> None:
        self.url = url
        self.headers = headers or {}
        self.language = language
        self.backoff = backoff or Backoff(first_s=0.5, max_s=8.0, attempts=5)
        self.buffer = SlidingBuffer(buffer_s)
        self.open_timeout_s = open_timeout_s
        self.final_timeout_s = final_timeout_s
        self.reconnects = 0
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._source_done = False
        self._stop_sent = False
        self._finalized = 0  # absolute 16 kHz sample index every final so far has covered
        self._partial: str | None = None
        self._session_id: str | None = None
        self.resume = ResumeState()

    async def _capture(self, blocks: AsyncIterator[np.ndarray]) -> None:
        try:
            async for block in blocks:
                self.buffer.append(block)
                self._queue.put_nowait(block)
        finally:
            self._queue.put_nowait(None)

    async def events(self, blocks: AsyncIterator[np.ndarray]) -> AsyncGenerator[StreamEvent, None]:
        """Stream ``blocks`` (16 kHz float32) and yield every event until the last final."""
        capture = asyncio.create_task(self._capture(blocks))
        delays = iter(self.backoff.delays())
        drop: ConnectionLost | None = None
        try:
            while True:
                try:
                    async with contextlib.aclosing(self._connection(drop)) as connection:
                        async for event in connection:
                            yield event
                    return
                except ConnectionLost as exc:
                    delay = next(delays, None)
                    if delay is None:
                        raise StreamLostError(
                            f"the stream's connection dropped {self.reconnects + 1} times; "
                            f"gave up: {exc}"
                        ) from exc
                    _LOGGER.warning("stream dropped (%s); reconnecting in %.1f s", exc, delay)
                    drop = exc
                    await asyncio.sleep(delay)
                    self.reconnects += 1
        finally:
            await stop_task(capture)

    async def _open(self, first: bool) -> Any:
        try:
            return await websockets.connect(
                self.url,
                additional_headers=self.headers,
                max_size=None,
                open_timeout=self.open_timeout_s,
                compression=None,
            )
        except websockets.InvalidStatus as exc:
            status = exc.response.status_code
            raise TransportError(f"{self.url} refused the WebSocket with HTTP {status}") from exc
        except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
            if first:
                raise TransportError(f"cannot reach {self.url}: {exc!r}") from exc
            raise ConnectionLost(f"cannot reconnect to {self.url}: {exc!r}") from exc

    async def _refusal(self, ws: Any, message: dict[str, Any]) -> Exception:
        """The typed error for an error message, with the close code that follows it."""
        with contextlib.suppress(TimeoutError):
            await within(5.0, ws.wait_closed())
        return error_from_ws(message, ws.close_code)

    async def _connection(self, drop: ConnectionLost | None) -> AsyncGenerator[StreamEvent, None]:
        """One connection: ready, replay of what no final covered, live audio, events."""
        ws = await self._open(first=drop is None)
        sender: asyncio.Task[None] | None = None
        self._stop_sent = False
        try:
            try:
                first = json.loads(await within(self.open_timeout_s, ws.recv()))
            except (websockets.ConnectionClosed, TimeoutError) as exc:
                raise ConnectionLost(f"no ready message: {exc!r}") from exc
            if first.get("type") != "ready":
                raise await self._refusal(ws, first)
            ready = ReadyMessage.model_validate(first)
            new_origin = self.buffer.since(self._finalized)[0]
            try:
                resumed, early = await open_session(
                    ws,
                    self.resume,
                    first,
                    self._start(),
                    origin=new_origin,
                    timeout_s=self.open_timeout_s,
                )
            except (websockets.ConnectionClosed, TimeoutError) as exc:
                raise ConnectionLost(f"no answer to start: {exc!r}") from exc
            wanted = new_origin if resumed is None else self.resume.resumed_at(resumed)
            origin, replay = self._take_replay(wanted)
            offset = self.resume.origin / SAMPLE_RATE
            if drop is not None:
                yield ReconnectEvent(
                    attempt=self.reconnects,
                    reason=str(drop),
                    previous_session_id=self._session_id,
                    resumed=resumed is not None,
                    replayed_s=round(replay.size / SAMPLE_RATE, 3),
                    lost_audio_s=round(max(0, origin - wanted) / SAMPLE_RATE, 3),
                    lost_partial=None if resumed is not None else self._partial,
                    offset_s=round(offset, 3),
                )
                if resumed is None:
                    self._partial = None
            self._session_id = self.resume.session_id or ready.session_id
            yield ready
            for message in [*early, *([resumed] if resumed is not None else [])]:
                if (event := self._event(message, offset)) is not None:
                    yield event
            sender = asyncio.create_task(self._send(ws, replay))
            async with contextlib.aclosing(self._receive(ws, offset)) as received:
                async for event in received:
                    yield event
        finally:
            await stop_task(sender)
            with contextlib.suppress(Exception):
                await ws.close()

    def _start(self) -> dict[str, Any]:
        return {
            "type": "start",
            "sample_rate": SAMPLE_RATE,
            "encoding": "pcm_s16le",
            "language": self.language,
        }

    def _take_replay(self, index: int) -> tuple[int, np.ndarray]:
        """(first sample to send, the audio from it on) for a new connection, from ``index``.

        The blocks still queued are in that audio already, so they leave the queue; both
        happen in one step, so no block is sent twice or skipped.
        """
        while not self._queue.empty():
            if self._queue.get_nowait() is None:
                self._source_done = True
        origin, replay = self.buffer.since(index)
        return origin, replay.copy()

    async def _send(self, ws: Any, replay: np.ndarray) -> None:
        """The start, the replay, then live blocks; ``stop`` when the source ends."""
        try:
            await self._send_all(ws, replay)
        except websockets.ConnectionClosed:
            return  # the receiver sees the same close and decides what it means

    async def _send_all(self, ws: Any, replay: np.ndarray) -> None:
        step = int(REPLAY_CHUNK_S * SAMPLE_RATE)
        for i in range(0, replay.size, step):
            await ws.send(float32_to_pcm16(replay[i : i + step]))
        while not self._source_done:
            block = await self._queue.get()
            if block is None:
                self._source_done = True
                break
            await ws.send(float32_to_pcm16(block))
        await ws.send(json.dumps({"type": "stop"}))
        self._stop_sent = True

    async def _next_message(self, ws: Any) -> str | bytes:
        # After ``stop`` the session owes its last final; before it, silence is normal.
        if self._stop_sent:
            return await within(self.final_timeout_s, ws.recv())
        return await ws.recv()  # type: ignore[no-any-return]

    async def _receive(self, ws: Any, offset: float) -> AsyncGenerator[StreamEvent, None]:
        """The session's messages as typed events, times shifted by ``offset``."""
        while True:
            try:
                raw = await self._next_message(ws)
            except websockets.ConnectionClosedOK:
                if self._stop_sent or ws.close_code not in DROPPED_CLOSE_CODES:
                    return
                raise ConnectionLost(f"the server closed the session ({ws.close_code})") from None
            except websockets.ConnectionClosedError as exc:
                if exc.rcvd is not None and exc.rcvd.code not in DROPPED_CLOSE_CODES:
                    return  # a deliberate close; its error message came before it
                raise ConnectionLost(f"connection lost ({exc})") from exc
            except TimeoutError as exc:
                raise TransportError(
                    f"no final within {self.final_timeout_s:.0f} s of the end of the audio"
                ) from exc
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            if message.get("type") == "error" and message.get("fatal"):
                raise await self._refusal(ws, message)
            if (event := self._event(message, offset)) is not None:
                yield event

    def _event(self, message: dict[str, Any], offset: float) -> StreamEvent | None:
        """A server message as a typed event on the stream's clock (None: skip it)."""
        shift_times(message, offset)
        try:
            event: StreamEvent = SERVER_MESSAGE.validate_python(message)
        except ValidationError:
            _LOGGER.debug("skipping a message this client does not know: %s", message)
            return None
        if event.type == "final":
            if not self.resume.fresh_final(message):
                return None  # sent again around a resume: already given
            self._finalized = max(self._finalized, int(event.end * SAMPLE_RATE))
            self.buffer.drop_before(self._finalized)
            self._partial = None
        elif event.type == "partial":
            self._partial = event.text
        return event
