"""What a streaming client needs to resume its server session after a dropped connection.

The gateway gives each ``/ws/transcribe`` session a resume token in its ``ready``, numbers
its finals (``index``) and ``ack``s the audio it holds. After a drop, a client opens a new
connection and sends ``start`` with the token and the index of the last final it got;
the gateway answers ``resumed`` with the stream time of the audio it holds (the client
sends what follows), then the finals the client missed. If the session cannot be resumed
(expired, unknown), it says so with an error and the connection is a new session: the
client then sends again what no final covered, as before resume existed.

:class:`ResumeState` keeps the token, the last final's index and where the server
session's time 0 sits on the client's own clock; :func:`open_session` does the exchange
on a new connection. Both the library (:mod:`voicemesh.client.streaming`) and the
command-line ``mic`` use them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from voicemesh.protocol import SAMPLE_RATE
from voicemesh.tasks import within

__all__ = ["NOT_RESUMED", "ResumeState", "open_session"]

NOT_RESUMED = frozenset({"session_not_found", "resume_unavailable", "resume_unsupported"})
"""Error codes that answer a resume the server could not make (the session is new)."""


@dataclass
class ResumeState:
    """One stream's hold on its server session, across connections."""

    token: str | None = None
    session_id: str | None = None
    last_final: int = -1
    """Index of the last final received (-1: none yet)."""
    origin: int = 0
    """The client's sample index at the server session's time 0."""

    def ready(self, message: dict[str, Any], origin: int) -> None:
        """A new server session began at client sample ``origin``."""
        self.token = message.get("resume_token")
        self.session_id = message.get("session_id")
        self.last_final = -1
        self.origin = origin

    def fresh_final(self, message: dict[str, Any]) -> bool:
        """Note a final; False for one already received (sent again around a resume)."""
        index = message.get("index")
        if not isinstance(index, int):
            return True
        if index <= self.last_final:
            return False
        self.last_final = index
        return True

    def start(self, base: dict[str, Any]) -> dict[str, Any]:
        """``base`` (a ``start`` message) asking to resume, when there is a session to."""
        if self.token is None:
            return base
        return {**base, "resume_token": self.token, "last_final": self.last_final}

    def resumed_at(self, message: dict[str, Any]) -> int:
        """The client sample to send from after a ``resumed`` message."""
        return self.origin + round(float(message["received_s"]) * SAMPLE_RATE)


async def open_session(
    ws: Any,
    state: ResumeState,
    ready: dict[str, Any],
    start: dict[str, Any],
    *,
    origin: int,
    timeout_s: float,
) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """After ``ready``: send ``start`` (asking to resume when ``state`` holds a session).

    Returns the ``resumed`` message (or None: the connection's own session goes on, and
    ``state`` now holds it, at client sample ``origin``) and the messages that came
    while waiting for the answer (the ``ready``'s session's acks, a non-resume error)."""
    asked = state.start(start)
    await ws.send(json.dumps(asked))
    early: list[dict[str, Any]] = []
    if "resume_token" in asked:
        while True:
            message = json.loads(await within(timeout_s, ws.recv()))
            kind = message.get("type")
            if kind == "resumed":
                state.session_id = message.get("session_id")
                return message, early
            early.append(message)
            if kind == "error" and message.get("code") in NOT_RESUMED:
                break
            if kind == "error" and message.get("fatal"):
                return None, early
    state.ready(ready, origin)
    return None, early
