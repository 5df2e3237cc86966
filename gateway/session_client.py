"""What the gateway's streaming-session core needs from the client it serves.

:class:`gateway.stream.GatewayStream` (routing, failover with replay, stall watch,
detector link) talks to its client only through :class:`SessionClient`, so every
front door that streams audio in is a thin adapter over the one core: the seed
WebSocket protocol uses :class:`voicemesh.wire.ClientSocket` as it is, the Wyoming
server its own adapter (:mod:`gateway.wyoming_asr`), and the OpenAI Realtime route a
third (:mod:`gateway.realtime`). An adapter translates in both directions:

* in: audio frames (``bytes``) and the core's control messages (``start``,
  ``flush``, ``stop``), in the order the client sent them;
* out: the core's messages (``ready``, ``partial``, ``final``, ``vad``,
  ``failover``, ``backend_slow`` errors), errors, a refusal, the end of the session.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any, Protocol

from pydantic import BaseModel

from voicemesh.wire import ClientMessage


class SessionClient(Protocol):
    """The client end of one streaming session, whatever protocol it speaks."""

    open: bool
    """False once the client is gone or the session closed it; sends are then no-ops."""

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        """Give the client one of the core's messages (a protocol model or a plain dict)."""
        ...

    async def error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        """Tell the client about an error; the session goes on unless ``fatal``."""
        ...

    async def refuse(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        """Turn the client away (no backend, no capacity): a fatal error, then the end."""
        ...

    async def close(self, code: int) -> None:
        """End the session from the server side (``code``: a WebSocket close code)."""
        ...

    def receive(self) -> AsyncIterator[ClientMessage]:
        """Audio frames and control messages until the client goes away."""
        ...


def new_session_id() -> str:
    """A short random id for one streaming session (log lines, events, backends)."""
    return uuid.uuid4().hex[:12]


class ClientInbox:
    """What an adapter hands the core, in order: frames and control messages, then the end.

    Bounded: a full inbox slows the adapter's reading of its client. :meth:`close` empties
    it (a producer blocked on a full one goes on, and what it puts is never read) and marks
    the end, so a core still reading sees it.
    """

    def __init__(self, size: int) -> None:
        self._queue: asyncio.Queue[ClientMessage | None] = asyncio.Queue(size)

    async def put(self, item: ClientMessage) -> None:
        """Hand the core one item (waits while the inbox is full)."""
        await self._queue.put(item)

    def put_nowait(self, item: ClientMessage) -> None:
        """Hand the core one item now (the first, into an empty inbox)."""
        self._queue.put_nowait(item)

    def close(self) -> None:
        """Nothing more goes in: drop what waits, and mark the end."""
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)

    async def items(self) -> AsyncIterator[ClientMessage]:
        """The items in order, until the end mark (what ``SessionClient.receive`` gives)."""
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item
