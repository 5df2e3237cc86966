"""What the gateway's streaming-session core needs from the client it serves.

:class:`gateway.stream.GatewayStream` (routing, failover with replay, stall watch,
detector link) talks to its client only through :class:`SessionClient`, so every
front door that streams audio in is a thin adapter over the one core: the seed
WebSocket protocol uses :class:`voicemesh.wire.ClientSocket` as it is, the Wyoming
server its own adapter (:mod:`gateway.wyoming_asr`), and the OpenAI Realtime route
will bring a third. An adapter translates in both directions:

* in: audio frames (``bytes``) and the core's control messages (``start``,
  ``flush``, ``stop``), in the order the client sent them;
* out: the core's messages (``ready``, ``partial``, ``final``, ``vad``,
  ``failover``, ``backend_slow`` errors), errors, a refusal, the end of the session.
"""

from __future__ import annotations

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
