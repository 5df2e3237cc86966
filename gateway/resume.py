"""Session resume: a client whose connection dropped carries its session on.

Every resumable session (the seed WebSocket's) gets a resume token in its ``ready``. Its
:class:`SessionKeeper` writes what another connection needs to the gateway's
:mod:`session store <gateway.session_store>` (Redis: any gateway replica; else memory):
every ``ack_interval_s`` the audio received since the last write, then an ``ack`` of the
stream time now held; each final before the client gets it (with its session ``index``).
So what the client was acked, and every final it may have missed, survive the gateway.

A client that reconnects sends ``start`` with the token and the index of the last final
it received (or ``?resume_token=&last_final=`` on the URL). :func:`resume_session` takes
the session over (the stream it replaces stops at its next write, or at once on this
replica), gives the backend the audio since the last final at the session's own clock,
sends again the finals the client missed, and answers ``resumed`` with the stream time of
the audio held: the client sends what follows. Only the key that opened a session can
resume it; an unknown, expired or foreign token gets ``session_not_found`` and the
connection goes on as the new session its ``ready`` named.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from gateway.detector_link import DetectorLink
from gateway.replay import BYTES_PER_SAMPLE, SessionBuffer
from gateway.session_client import SessionClient
from gateway.session_store import SessionRecord, SessionStore, token_hash
from gateway.state import GatewayState
from gateway.stt_backend import Backend, StallWatch
from voicemesh.errors import BadRequest, RegistryUnavailable
from voicemesh.protocol import (
    CLOSE_RESUMED,
    SAMPLE_RATE,
    AckMessage,
    ResumedMessage,
    StartMessage,
)

__all__ = ["RESUME_FIELDS", "SessionKeeper", "resume_request", "resume_session"]

_LOGGER = logging.getLogger(__name__)

REPLAY_CHUNK_BYTES = SAMPLE_RATE * BYTES_PER_SAMPLE // 2
RESUME_FIELDS = {"resume_token": None, "last_final": None}
"""Cleared from a ``start`` before it is kept or sent on to an engine."""


class GatewayStream(Protocol):
    """What resume needs of :class:`gateway.stream.GatewayStream` (which imports this)."""

    state: GatewayState
    client: SessionClient
    session_id: str
    keeper: SessionKeeper | None
    backend: Backend | None
    buffer: SessionBuffer
    detector: DetectorLink
    stall: StallWatch
    audio_seen: bool
    last_final_end: float
    finals: int

    def backend_start(self) -> StartMessage:
        """The ``start`` every backend of the session gets."""
        ...


class SessionKeeper:
    """Keeps one session's record in the store and tells the client what is held."""

    def __init__(
        self,
        store: SessionStore,
        *,
        session_id: str,
        key_id: str,
        keep_finals: int,
        tail_s: float,
        ack_interval_s: float,
    ) -> None:
        self.store = store
        self.token = f"{session_id}.{secrets.token_urlsafe(24)}"
        self.record = SessionRecord(session_id, key_id, token_hash(self.token), start={})
        self.keep_finals = keep_finals
        self.tail_samples = int(tail_s * SAMPLE_RATE)
        self.ack_interval_s = ack_interval_s
        self.taken_over = False
        """Another connection resumed the session: this one must end."""
        self._stored_from = 0  # first stream sample of the audio in the store
        self._written = 0  # total_samples at the last good write
        self._whole = True  # the next write rewrites the audio (the first, or after a failure)
        self._failing = False
        self.end_here: Callable[[], None] | None = None
        """Called when a resume on this replica takes the session over."""

    @property
    def session_id(self) -> str:
        """The session the record is of (a resume changes it to the resumed one)."""
        return self.record.session_id

    def number(self, final: dict[str, Any]) -> None:
        """Give a final its session ``index`` and keep it for clients that miss it."""
        final["index"] = self.record.final_count
        self.record.final_count += 1
        self.record.finals = [*self.record.finals, final][-self.keep_finals :]

    async def final(self, final: dict[str, Any], buffer: SessionBuffer) -> bool:
        """Number a final and write it (with the audio it left) before the client gets it, so
        a client that misses it gets it on resume. False: the session was resumed elsewhere."""
        self.number(final)
        if not self._failing:  # while the store is away, the keep loop alone tries it
            await self.save(buffer, whole=True)
        else:
            self._whole = True
        return not self.taken_over

    async def save(self, buffer: SessionBuffer, *, whole: bool = False) -> bool:
        """Write what the store lacks; False when nothing could be written (or taken over).

        ``whole`` rewrites the audio from the last final (after a final trimmed it)."""
        if self.taken_over:
            return False
        total = buffer.total_samples
        start = max(buffer.start_sample, total - self.tail_samples)
        rewrite = whole or self._whole or total - self._stored_from > 2 * self.tail_samples
        if rewrite:
            self.record.audio = buffer.audio_since(start)
            append = None
        else:  # the store's audio still begins where the last rewrite put it
            start, append = self._stored_from, buffer.audio_since(self._written)
        self.record.start_sample = start
        self.record.total_samples = total
        try:
            done = await self.store.write(self.record, append=append)
        except RegistryUnavailable as exc:
            if not self._failing:
                _LOGGER.warning("session %s not resumable for now: %s", self.session_id, exc)
            self._failing, self._whole = True, True
            return False
        self.record.audio = b""  # kept in the store, not twice in memory
        if not done:
            self.taken_over = True
            return False
        if self._failing:
            _LOGGER.info("session %s resumable again", self.session_id)
        self._failing, self._whole = False, False
        if rewrite:
            self._stored_from = start
        self._written = total
        return True

    async def run(self, stream: GatewayStream) -> None:
        """While ``stream`` runs: its first write, then :meth:`keep`; a resume of its session
        on this replica ends it at once (through :attr:`end_here`)."""

        def end_here() -> None:
            self.taken_over = True
            asyncio.get_running_loop().create_task(self.stop_stream(stream))

        self.end_here = end_here
        stream.state.resumable[self.session_id] = end_here
        await self.save(stream.buffer)
        await self.keep(stream)

    def adopt(self, record: SessionRecord, token: str) -> bytes:
        """Keep ``record`` (a resumed session, taken over) from now on; its audio."""
        record.audio, audio = b"", record.audio
        # Where the kept audio begins on the session clock follows from how much there is.
        record.start_sample = record.total_samples - len(audio) // BYTES_PER_SAMPLE
        self.record, self.token = record, token
        self._stored_from, self._written = record.start_sample, record.total_samples
        self._whole = False
        return audio

    async def keep(self, stream: GatewayStream) -> None:
        """Until the session ends: write new audio and ``ack`` it every ``ack_interval_s``."""
        acked = -1
        while True:
            await asyncio.sleep(self.ack_interval_s)
            if self._written == stream.buffer.total_samples and acked == self._written:
                continue
            if await self.save(stream.buffer):
                if acked != self._written:
                    acked = self._written
                    await stream.client.send(AckMessage(received_s=self.received_s))
            elif self.taken_over:
                await self.stop_stream(stream)
                return

    @property
    def received_s(self) -> float:
        """Stream time of the audio the store holds."""
        return round(self._written / SAMPLE_RATE, 3)

    async def stop_stream(self, stream: GatewayStream) -> None:
        """End a stream whose session another connection resumed."""
        self.taken_over = True
        _LOGGER.info("session %s resumed by another connection; ending this one", self.session_id)
        await stream.client.refuse(
            "session_resumed", "another connection resumed this session", CLOSE_RESUMED
        )

    async def finish(self, stream: GatewayStream, *, ended: bool) -> None:
        """At the end of the connection: forget a session that ended, keep a dropped one."""
        if stream.state.resumable.get(self.session_id) is self.end_here:
            del stream.state.resumable[self.session_id]
        if self.taken_over:
            return
        try:
            if ended:
                await self.store.forget(self.session_id, self.record.generation)
            else:
                await self.save(stream.buffer, whole=True)
        except RegistryUnavailable as exc:
            _LOGGER.warning("session %s: %s", self.session_id, exc)


def resume_request(query: Mapping[str, str]) -> StartMessage | None:
    """The resume a client asked for on the URL (``?resume_token=...&last_final=N``)."""
    token = query.get("resume_token")
    if not token:
        return None
    last = query.get("last_final", "-1")
    try:
        return StartMessage(resume_token=token, last_final=int(last))
    except ValueError as exc:  # pydantic's ValidationError is one
        raise BadRequest(
            f"last_final must be a final's index (-1 for none), got {last[:20]!r}",
            code="bad_message",
        ) from exc


async def resume_session(stream: GatewayStream, start: StartMessage) -> bool:
    """Carry on the session ``start.resume_token`` names on ``stream``'s connection.

    False (after an error message) when it cannot: the connection goes on as its own
    new session. Called before the connection's first audio, with its backend open."""
    keeper, client = stream.keeper, stream.client
    token = start.resume_token or ""
    if keeper is None or stream.backend is None:
        await client.error("resume_unsupported", "this front door does not resume sessions")
        return False
    if stream.audio_seen:
        await client.error("bad_message", "a resume must come before the first audio frame")
        return False
    session_id = token.partition(".")[0]
    try:
        record = await keeper.store.take_over(session_id, token_hash(token), keeper.record.key_id)
    except RegistryUnavailable as exc:
        await client.error("resume_unavailable", f"{exc.message}; this is a new session")
        return False
    if record is None:
        await client.error(
            "session_not_found",
            f"unknown or expired resume token; this connection is new session {stream.session_id}",
        )
        return False
    old = stream.state.resumable.get(record.session_id)
    if old is not None:
        old()  # the replaced connection on this replica ends now
    await keeper.finish(stream, ended=True)  # the new session this connection had
    audio = keeper.adopt(record, token)
    stream.session_id = record.session_id
    if keeper.end_here is not None:
        stream.state.resumable[record.session_id] = keeper.end_here
    stream.buffer.restore(record.start_sample, record.total_samples, audio)
    await _replay(stream, audio, record.start_sample / SAMPLE_RATE)
    last = -1 if start.last_final is None else start.last_final
    owed = [f for f in record.finals if int(f.get("index", -1)) > last]
    missing = max(0, record.final_count - 1 - last - len(owed))
    await client.send(
        ResumedMessage(
            session_id=record.session_id,
            received_s=round(record.total_samples / SAMPLE_RATE, 3),  # what it holds
            replayed_ms=round(len(audio) / (SAMPLE_RATE * BYTES_PER_SAMPLE) * 1000, 1),
            finals_resent=len(owed),
            finals_missing=missing,
        )
    )
    for final in owed:
        await client.send(final)
    stream.finals = record.final_count
    stream.state.metrics.count("resume", "ok")
    held_s = round(record.total_samples / SAMPLE_RATE, 3)
    stream.state.events.publish(
        "resumed", session_id=record.session_id, finals_resent=len(owed), held_s=held_s
    )
    _LOGGER.info(
        "session %s resumed at %.2f s (%d finals sent again, %.1f s replayed)",
        record.session_id,
        record.total_samples / SAMPLE_RATE,
        len(owed),
        len(audio) / (SAMPLE_RATE * BYTES_PER_SAMPLE),
    )
    return True


async def _replay(stream: GatewayStream, audio: bytes, offset: float) -> None:
    """Give the backend (and the detector) the audio since the last final, on the session
    clock: the backend has had none yet, so its offset can still move."""
    backend = stream.backend
    assert backend is not None
    backend.offset = offset
    stream.detector.offset = offset
    stream.last_final_end = offset
    await backend.ws.send(stream.backend_start().dumps())
    for i in range(0, len(audio), REPLAY_CHUNK_BYTES):
        chunk = audio[i : i + REPLAY_CHUNK_BYTES]
        await backend.ws.send(chunk)
        await stream.detector.send(chunk)
    stream.stall.restart(speech_pending=bool(audio))
