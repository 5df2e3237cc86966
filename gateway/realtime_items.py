"""OpenAI Realtime transcription: the session core's messages as the client's events (pure).

:class:`TranscriptionItems` turns the core's messages into the events a client waits
for, one conversation item per user turn: ``input_audio_buffer.speech_started`` /
``speech_stopped`` / ``committed``, ``conversation.item.input_audio_transcription.delta``
(the new stable text of a partial) and ``.completed`` (the final). Items follow stream
time, not backends: a failover replays the audio since the last final into the item
still open, so the client sees nothing of it but the wait. :func:`error_event` is
OpenAI's error shape.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from gateway.wyoming_asr import TranscriptDeltas

TIME_SLACK_S = 0.1
"""Stream times of the core's messages that differ by less than this are the same point."""
SERVER_ERRORS = frozenset({"no_backend", "busy", "engine_unavailable", "internal_error"})
"""Codes whose ``error.type`` is ``server_error`` (the rest are the client's to fix)."""

IdMaker = Callable[[str], str]
"""Makes a fresh id with a prefix (``event``, ``item``)."""


def new_id(prefix: str) -> str:
    """An OpenAI-style id: ``event_…``, ``item_…``."""
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


def session_event(kind: str, session: dict[str, Any], make_id: IdMaker = new_id) -> dict[str, Any]:
    """``session.created`` and friends."""
    return {"type": kind, "event_id": make_id("event"), "session": session}


def error_event(
    code: str,
    message: str,
    *,
    client_event_id: str | None = None,
    make_id: IdMaker = new_id,
) -> dict[str, Any]:
    """An ``error`` event in OpenAI's shape; ``client_event_id``: the event it answers."""
    return {
        "type": "error",
        "event_id": make_id("event"),
        "error": {
            "type": "server_error" if code in SERVER_ERRORS else "invalid_request_error",
            "code": code,
            "message": message,
            "param": None,
            "event_id": client_event_id,
        },
    }


@dataclass(eq=False)
class Item:
    """One user turn: its id, its text so far, and (manual turns) where it was committed."""

    id: str
    start_s: float
    deltas: TranscriptDeltas = field(default_factory=TranscriptDeltas)
    audio_s: float = 0.0
    commit_end_s: float | None = None


class TranscriptionItems:
    """The core's messages as OpenAI input-transcription events (state, no I/O).

    Server VAD (``vad`` True): the engine's speech start opens an item
    (``speech_started``); its final stops, commits and completes it. Manual turns:
    finals gather in the open item until the client commits it; it completes when the
    final its commit flushed arrives, or, when no speech was owed, on :meth:`settle`.
    """

    def __init__(self, *, vad: bool = True, make_id: IdMaker = new_id) -> None:
        self.vad = vad
        self.make_id = make_id
        self.current: Item | None = None
        self.awaiting: list[Item] = []
        """Committed (manual) items waiting for their last final."""
        self.previous_id: str | None = None
        self.speech_since: float | None = None
        """Stream time of speech the engine has started and not yet finalized."""
        self.settled_s = 0.0
        """Stream time up to which audio is finalized, committed or cleared."""
        self.discard: tuple[float, float] | None = None

    def _event(self, kind: str, **fields: Any) -> dict[str, Any]:
        return {"type": kind, "event_id": self.make_id("event"), **fields}

    def _open(self, start_s: float, events: list[dict[str, Any]]) -> Item:
        item = self.current = Item(self.make_id("item"), start_s)
        if self.vad:
            events.append(
                self._event(
                    "input_audio_buffer.speech_started",
                    audio_start_ms=max(0, round(start_s * 1000)),
                    item_id=item.id,
                )
            )
        return item

    def _committed(self, item: Item) -> dict[str, Any]:
        event = self._event(
            "input_audio_buffer.committed", item_id=item.id, previous_item_id=self.previous_id
        )
        self.previous_id = item.id
        return event

    def _delta(self, item: Item, delta: str | None) -> list[dict[str, Any]]:
        if not delta:
            return []
        kind = "conversation.item.input_audio_transcription.delta"
        return [self._event(kind, item_id=item.id, content_index=0, delta=delta)]

    def _completed(self, item: Item) -> dict[str, Any]:
        if item in self.awaiting:
            self.awaiting.remove(item)
        return self._event(
            "conversation.item.input_audio_transcription.completed",
            item_id=item.id,
            content_index=0,
            transcript=item.deltas.transcript,
            usage={"type": "duration", "seconds": round(item.audio_s, 3)},
        )

    def _owner(self, t: float) -> Item | None:
        """The committed item that audio up to stream time ``t`` belongs to."""
        for item in self.awaiting:
            if item.commit_end_s is not None and t <= item.commit_end_s + TIME_SLACK_S:
                return item
        return None

    def _discarded(self, t: float) -> bool:
        return self.discard is not None and self.discard[0] + TIME_SLACK_S < t <= (
            self.discard[1] + TIME_SLACK_S
        )

    def on_message(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        """The events one of the core's messages gives (``failover``, ``ready``: none)."""
        kind = message.get("type")
        events: list[dict[str, Any]] = []
        if kind == "vad" and message.get("source", "engine") == "engine":
            t = float(message.get("t", 0.0))
            if message.get("event") == "speech_start" and not self._discarded(t):
                self.speech_since = t if self.speech_since is None else self.speech_since
                if self.current is None and self._owner(t) is None:
                    self._open(t, events)
        elif kind == "partial":
            end = float(message.get("end", 0.0))
            if not self._discarded(end):
                start = float(message.get("start", 0.0))
                item = self._owner(end) or self.current or self._open(start, events)
                events += self._delta(
                    item, item.deltas.on_partial(str(message.get("stable_text") or ""))
                )
        elif kind == "final":
            events += self._on_final(message)
        return events

    def _on_final(self, message: dict[str, Any]) -> list[dict[str, Any]]:
        start, end = float(message.get("start", 0.0)), float(message.get("end", 0.0))
        self.speech_since = None
        if self._discarded(end):
            return []
        self.settled_s = max(self.settled_s, end)
        events: list[dict[str, Any]] = []
        owner = self._owner(end)
        item = owner or self.current or self._open(start, events)
        events += self._delta(item, item.deltas.on_final(str(message.get("text") or "")))
        item.audio_s += max(0.0, end - start)
        if owner is not None:
            if owner.commit_end_s is not None and end >= owner.commit_end_s - TIME_SLACK_S:
                events.append(self._completed(owner))
        elif self.vad:
            stopped = "input_audio_buffer.speech_stopped"
            events.append(self._event(stopped, audio_end_ms=round(end * 1000), item_id=item.id))
            events += [self._committed(item), self._completed(item)]
            self.current = None
        return events

    def commit(self, appended_s: float) -> tuple[list[dict[str, Any]], Item | None]:
        """The client committed the buffer (all audio to ``appended_s``).

        Server VAD: the final the core's flush brings commits the turn, so nothing yet.
        Manual: ``committed`` now, and the item that now waits for its final.
        """
        if self.vad:
            return [], None
        item = self.current or Item(self.make_id("item"), self.settled_s)
        self.current = None
        item.commit_end_s = appended_s
        self.settled_s = max(self.settled_s, appended_s)
        self.awaiting.append(item)
        return [self._committed(item)], item

    def settle(self, item: Item, *, force: bool = False) -> list[dict[str, Any]]:
        """Complete a committed item that no final is owed to (or, ``force``, anyway)."""
        if item not in self.awaiting:
            return []
        since, until = self.speech_since, item.commit_end_s
        if not force and since is not None and until is not None and since <= until:
            return []  # the engine heard speech before the commit: its final is owed
        return [self._completed(item)]

    def clear(self, appended_s: float) -> list[dict[str, Any]]:
        """Drop the uncommitted audio (to ``appended_s``): its item never completes."""
        self.discard = (self.settled_s, appended_s)
        self.settled_s = max(self.settled_s, appended_s)
        self.current = None
        return [self._event("input_audio_buffer.cleared")]
