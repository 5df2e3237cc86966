"""The STT backend end of a gateway stream: the connection, its clock, and stall watching.

:func:`connect_backend` opens ``WS /ws/transcribe`` on one replica and waits for its
``ready`` (failures come out as :class:`~voicemesh.errors.BackendClosed` /
:class:`~voicemesh.errors.BackendTimeout` through :func:`voicemesh.errors.backend_errors`).
WebSocket pings (every second, answered within the stall timeout) catch a frozen or
unplugged backend even while nobody speaks.

:class:`StallWatch` tells when a backend that still answers pings owes the client
text for too long: speech is pending (a ``partial`` or a ``speech_start`` came, from
the backend or from the gateway's own detector, and no ``final`` or ``speech_end``
since) and the backend has said nothing for the stall timeout; or it keeps sending
partials of one utterance past the longest an engine makes (``max_utterance_s``)
with no ``final``. The detector is what catches a backend that never says anything
at all; since a loaded engine may hear speech later than the detector, speech only
the detector heard counts only while the backend has said nothing since it took the
session, and only after twice the stall timeout. Pings are given longer than the
stall timeout, so that while speech is pending the stall watch, which says why,
speaks first. What the stream does then depends on whether another replica can take the
session: it moves, or (alive but slow, nowhere to go) it stays and tells the client
how far behind the backend is (:func:`slow_backend_message`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any

import websockets
from websockets.asyncio.client import ClientConnection

from gateway.asr_models import models_of
from gateway.registry_view import RegistryView
from gateway.session_client import SessionClient
from gateway.state import GatewayState
from voicemesh.audio import AudioStreamDecoder, stream_decoder
from voicemesh.errors import (
    BackendClosed,
    BackendTimeout,
    BadRequest,
    Busy,
    EngineUnavailable,
    backend_errors,
)
from voicemesh.protocol import StartMessage
from voicemesh.registry import ReplicaInfo
from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)

_TIME_KEYS = ("start", "end", "t")
PING_INTERVAL_S = 1.0
PING_GRACE_S = 5.0
"""A pong may come this much later than the stall timeout before the socket is closed.
Generous: a process on a loaded machine answers late, and a dead one closes its TCP
connection at once; a frozen one the stall watch catches while speech is pending."""


def ws_url(http_url: str, path: str) -> str:
    """``http://host:port`` -> ``ws://host:port/path``."""
    base = http_url.rstrip("/")
    if base.startswith("https://"):
        return "wss://" + base[len("https://") :] + path
    if base.startswith("http://"):
        return "ws://" + base[len("http://") :] + path
    return base + path


def shift_times(message: dict[str, Any], offset: float) -> dict[str, Any]:
    """Move a backend message's times by ``offset`` seconds (stream time on the client)."""
    if offset == 0:
        return message
    for key in _TIME_KEYS:
        if isinstance(message.get(key), int | float):
            message[key] = round(message[key] + offset, 3)
    for segment in message.get("segments") or []:
        for key in ("start", "end"):
            segment[key] = round(segment[key] + offset, 3)
        for word in segment.get("words") or []:
            for key in ("start", "end"):
                word[key] = round(word[key] + offset, 3)
    return message


class Backend:
    """An open WebSocket to one STT replica, with the clock offset of its stream."""

    def __init__(
        self, replica: ReplicaInfo, ws: ClientConnection, ready: dict[str, Any], offset: float
    ) -> None:
        self.replica = replica
        self.ws = ws
        self.ready = ready
        self.offset = offset


async def connect_backend(
    replica: ReplicaInfo,
    start: StartMessage,
    offset: float,
    *,
    connect_timeout_s: float,
    ping_timeout_s: float,
    takeover: bool = False,
    headers: dict[str, str] | None = None,
) -> Backend:
    """Open a session on ``replica``: connect, wait for ``ready``, send ``start``.

    ``takeover``: the session moves here from another replica (failover or a mode
    change); a replica admits it even when it would refuse a new session for load,
    since refusing it would cut a live session. A replica that refuses for load
    raises :class:`~voicemesh.errors.Busy`. ``headers`` go with the handshake (the
    internal token).
    """
    url = ws_url(replica.url, "/ws/transcribe") + ("?takeover=1" if takeover else "")
    timeout = connect_timeout_s
    with backend_errors(url, doing="connect to"):
        try:
            ws = await within(
                timeout,
                websockets.connect(
                    url,
                    additional_headers=headers,
                    max_size=None,
                    open_timeout=timeout,
                    ping_interval=PING_INTERVAL_S,
                    ping_timeout=ping_timeout_s + PING_GRACE_S,
                    # PCM does not deflate; compressing it only costs CPU on both ends.
                    compression=None,
                ),
            )
        except TimeoutError as exc:
            # A connection that does not even open is a closed door, not a slow reply.
            raise BackendClosed(f"cannot connect to {url}: {exc!r}") from exc
    try:
        with backend_errors(url, doing="get ready from"):
            try:
                raw = await within(timeout, ws.recv())
                ready = json.loads(raw)
                if ready.get("type") == "error" and ready.get("code") == "busy":
                    retry = ready.get("retry_after")
                    raise Busy(
                        f"{replica.url}: {ready.get('message', 'busy')}",
                        retry_after=retry if isinstance(retry, int) else None,
                    )
                if ready.get("type") != "ready":
                    raise BackendClosed(f"{url} refused the session: {ready.get('message', raw)}")
                await ws.send(start.dumps())
            except (websockets.ConnectionClosed, ValueError) as exc:
                raise BackendTimeout(f"{url} did not get ready: {exc!r}") from exc
    except BaseException:
        await ws.close()
        raise
    return Backend(replica, ws, ready, offset)


def start_decoder(
    start: StartMessage, backend: Backend | None, max_frame_bytes: int
) -> AudioStreamDecoder:
    """The decoder of the audio format ``start`` asks for, once the whole ``start`` is
    checked: a refused one (a bad format, ``bad_language``) changes nothing."""
    decoder = stream_decoder(
        sample_rate=start.sample_rate,
        encoding=start.encoding,
        channels=start.channels,
        max_frame_bytes=max_frame_bytes,
    )
    check_language(backend, start.language)
    return decoder


def check_language(backend: Backend | None, language: str | None) -> None:
    """Refuse (``bad_language``) a language the serving model's registry entry says it cannot
    decode (or its ``ready`` said), as the engine would, but before the gateway takes the
    start's new audio format. Where neither lists languages, the engine decides."""
    if backend is None or language is None or not language.strip():
        return
    model = backend.ready.get("model")
    known = [m.languages for m in models_of(backend.replica) if m.name == model and m.languages]
    codes = backend.ready.get("languages") or (known[0] if known else None)
    if codes and language.strip().lower() not in codes:
        raise BadRequest(
            f"language {language!r} is not one this model knows; use an ISO 639-1 code "
            f"such as {', '.join(sorted(codes)[:8])}, ...",
            code="bad_language",
        )


async def open_first_backend(
    view: RegistryView,
    candidates: list[ReplicaInfo],
    start: StartMessage,
    offset: float,
    *,
    takeover: bool,
    connect_timeout_s: float,
    ping_timeout_s: float,
    failed: set[str],
    session_id: str,
) -> Backend:
    """The first of ``candidates`` that takes the session; a refusing one joins ``failed``.

    Each replica is reserved in the view before the connect, so that sessions opening
    at the same moment see this one; a refusal releases it and marks it failed.
    """
    last_error = (
        "no other STT replica is available"
        if failed
        else "no STT replica is ready (none registered, draining, or model unloaded)"
    )
    busy: list[Busy] = []
    # Replicas that said in their last heartbeat that they would refuse go after the others;
    # held-out ones (hung, or failing a moment ago) last whatever their stale entry says.
    for replica in sorted(candidates, key=lambda r: (view.held(r), not r.load.admitting)):
        if busy and not takeover and view.silent(replica):
            # A beating replica said busy: a new session is told when to retry rather than
            # sent to one that stopped beating (a hung process would take it and stall it).
            continue
        view.assign(replica)
        try:
            return await connect_backend(
                replica,
                start,
                offset,
                connect_timeout_s=connect_timeout_s,
                ping_timeout_s=ping_timeout_s,
                takeover=takeover,
                headers=view.engine_headers,
            )
        except Busy as exc:
            # Alive and loaded: it stays in routing for the next session.
            view.release(replica)
            busy.append(exc)
            _LOGGER.info("session %s: %s is busy: %s", session_id, replica.url, exc.message)
        except EngineUnavailable as exc:
            view.release(replica)
            last_error = exc.message
            failed.add(replica.instance_id)
            view.mark_failed(replica)
            _LOGGER.warning("session %s: %s refused: %s", session_id, replica.url, exc.message)
    if busy:
        waits = [b.retry_after for b in busy if b.retry_after is not None]
        raise Busy(
            "every STT replica is at capacity (" + "; ".join(b.message for b in busy) + ")",
            retry_after=max(waits) if waits else None,
        )
    raise EngineUnavailable(
        f"no STT backend could take the session: {last_error}", code="no_backend"
    )


def refusal_extra(exc: EngineUnavailable, session_id: str, state: GatewayState) -> dict[str, Any]:
    """What a client refused before any audio is told beside the error: for a mesh at
    capacity (``busy``), when to retry and why. The refusal is logged and published on
    the status feed (it is counted in metrics when the client is told)."""
    if not isinstance(exc, Busy):
        return {}
    _LOGGER.warning("session %s refused: %s", session_id, exc.message)
    extra = {
        "retry_after": exc.retry_after or state.settings.busy_retry_after_s,
        "reason": exc.message,
    }
    state.events.publish("session_refused", session_id=session_id, **extra)
    return extra


class StallWatch:
    """Whether the backend owes the client text and has been quiet, or finalless, too long.

    Times of messages are wall-clock (``clock``); utterance starts and the audio
    position are stream seconds, as the client sees them.
    """

    def __init__(
        self, timeout_s: float, max_utterance_s: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.timeout_s = timeout_s
        self.max_utterance_s = max_utterance_s
        self.clock = clock
        self.speech_since: float | None = None
        """When the speech the backend has not finished yet began (None: nothing owed)."""
        self.last_message = clock()
        self.utterance_start: float | None = None
        """Stream time where the utterance the backend sends partials of began."""
        self.spoke = False
        """Whether the backend has sent anything since it took the session."""
        self._owed_for_detector = False

    def restart(self, *, speech_pending: bool) -> None:
        """A new backend took the session (with replayed speech when ``speech_pending``)."""
        now = self.clock()
        self.last_message = now
        self.speech_since = now if speech_pending else None
        self.utterance_start = None
        self.spoke = False
        self._owed_for_detector = False

    def heard(self) -> None:
        """The backend sent something."""
        self.last_message = self.clock()

    def track(self, message: dict[str, Any]) -> None:
        """Note whether a backend ``message`` opens speech (text now owed) or closes it."""
        kind = message.get("type")
        event = message.get("event")
        self.spoke = True
        if kind == "partial" or (kind == "vad" and event == "speech_start"):
            if self.speech_since is None:
                self.speech_since = self.clock()
            self._owed_for_detector = False
        elif kind == "final" or (kind == "vad" and event == "speech_end"):
            self.speech_since = None
            self._owed_for_detector = False
        if kind == "partial" and self.utterance_start is None:
            start = message.get("start")
            self.utterance_start = float(start) if isinstance(start, int | float) else None
        elif kind == "final":
            self.utterance_start = None

    def track_detector(self, message: dict[str, Any]) -> None:
        """Note what the detector heard: speech begun is text the backend now owes.

        Speech the detector then finds was no speech (an unconfirmed ``speech_end``)
        is owed no more, unless the backend itself took it for speech.
        """
        kind = message.get("type")
        if kind == "speech_start" and self.speech_since is None and not self.spoke:
            self.speech_since = self.clock()
            self._owed_for_detector = True
        elif kind == "speech_end" and not message.get("confirmed") and self._owed_for_detector:
            self.speech_since = None
            self._owed_for_detector = False

    def quiet_s(self) -> float:
        """Seconds the backend has been quiet while it owed text (0 when it owes none)."""
        if self.speech_since is None:
            return 0.0
        return self.clock() - max(self.last_message, self.speech_since)

    def final_overdue_s(self, audio_s: float) -> float:
        """Audio seconds past the longest utterance an engine makes without a final."""
        if self.utterance_start is None:
            return 0.0
        return audio_s - self.utterance_start - self.max_utterance_s

    def stalled(self, audio_s: float) -> bool:
        """Speech is pending and the backend said nothing for the stall timeout, or it
        sends partials of an utterance that should have had its final by now
        (``audio_s``: stream seconds of audio sent)."""
        return self.final_overdue_s(audio_s) > self.timeout_s or (
            self.speech_since is not None and self.quiet_s() > self._quiet_limit_s()
        )

    def _quiet_limit_s(self) -> float:
        return self.timeout_s * (2 if self._owed_for_detector else 1)

    def why(self, audio_s: float) -> str:
        """The failover reason for a stall (``stalled: ...``)."""
        if self.final_overdue_s(audio_s) > self.timeout_s:
            return f"stalled: partials but no final for over {self.max_utterance_s:g} s of audio"
        return f"stalled: no message for {self._quiet_limit_s():g} s while speech was pending"

    def behind_s(self, audio_s: float) -> float:
        """How long the backend has owed text, or a final (seconds)."""
        return max(self.quiet_s(), self.final_overdue_s(audio_s))


def slow_backend_message(replica: ReplicaInfo, behind_s: float) -> dict[str, Any]:
    """The non-fatal ``backend_slow`` error telling the client its only backend lags.

    ``behind_s`` is how long the backend has owed text; ``queue`` and ``rtf`` are what
    the replica last reported to the registry (decodes waiting or running, recent
    real-time factor).
    """
    load = replica.load
    return {
        "type": "error",
        "code": "backend_slow",
        "fatal": False,
        "message": (
            f"the STT backend is {behind_s:.1f} s behind (queue {load.queue}) and no "
            "other replica can take the session; waiting for it"
        ),
        "backend": replica.url,
        "behind_s": round(behind_s, 1),
        "queue": load.queue,
        "rtf": load.rtf,
    }


async def report_slow_backend(
    state: GatewayState, client: SessionClient, session_id: str, backend: Backend, behind_s: float
) -> None:
    """Tell the client (once per stall) that its only backend lags, and log and count it."""
    current = next(
        (
            r
            for r in state.view.snapshot(include_held=True)
            if r.instance_id == backend.replica.instance_id
        ),
        backend.replica,
    )
    message = slow_backend_message(current, behind_s)
    _LOGGER.warning("session %s: %s", session_id, message["message"])
    state.metrics.error("backend_slow")
    state.events.publish(
        "backend_slow",
        session_id=session_id,
        backend=current.url,
        behind_s=message["behind_s"],
        queue=message["queue"],
    )
    await client.send(message)
