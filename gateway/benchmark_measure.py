"""One benchmark request, measured: a clip streamed through the session core, or a sentence
spoken through the TTS routing; and the summary of a run's rows.

A clip goes through :class:`~gateway.stream.GatewayStream`, the session core every
streaming front door uses, with a :class:`BenchmarkListener` as its client: routing,
detector, failover with replay and stall watch are the ones a WebSocket client gets,
and the session takes a slot in the limits like any other. Audio goes in 100 ms frames,
at the pace it was spoken (``real_time``) or as fast as the core takes it. Measured:

* ``ready_ms``: from opening the session to the core's ``ready`` (a backend answered);
* ``first_partial_ms``: from the first audio frame to the first ``partial``;
* ``final_ms``: from the moment the audio a final ends with was sent to that final
  (the last final of the clip: after a ``stop``, the engine's closing latency);
* ``wer``: word error rate in percent of the finals, joined, against the clip's
  reference transcript (:func:`voicemesh.scoring.error_rate`).

A sentence is one streamed ``POST /v1/synthesize`` through the gateway's
forward-with-failover (:func:`gateway.wyoming_tts.speak`, the path the Wyoming front
door uses); ``first_chunk_ms`` is the time to its first audio and ``rtf`` the time to
its last audio over the audio's length.
"""

from __future__ import annotations

import asyncio
import bisect
import time
from collections.abc import AsyncIterator
from typing import Any

import numpy as np
from pydantic import BaseModel
from wyoming.audio import AudioChunk, AudioStart
from wyoming.event import Event

from gateway.auth import SessionSlot
from gateway.keys import Principal
from gateway.session_client import ClientInbox, new_session_id
from gateway.state import GatewayState
from gateway.stream import GatewayStream
from gateway.wyoming_tts import speak
from voicemesh.assets.speech_clips import SpeechClip
from voicemesh.errors import VoiceMeshError
from voicemesh.protocol import SAMPLE_RATE, StartMessage, StopMessage
from voicemesh.scoring import error_rate
from voicemesh.tasks import stop_task
from voicemesh.wire import ClientMessage

FRAME_S = 0.1
"""Audio per frame sent into a session."""
FRAME_BYTES = int(SAMPLE_RATE * FRAME_S) * 2
INBOX_FRAMES = 16


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def request_error(code: str, message: str) -> dict[str, str]:
    """A failed request's ``error`` in a row."""
    return {"code": code, "message": message}


class BenchmarkListener:
    """The benchmark's end of one streaming session (a :class:`SessionClient`): it feeds
    a clip in and notes when each of the core's messages arrives."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.open = True
        self.inbox = ClientInbox(INBOX_FRAMES)
        self.ready = asyncio.Event()
        self.opened_at = time.monotonic()
        self.ready_at: float | None = None
        self.backend: str | None = None
        self.sent_at: list[float] = []
        """When each frame went in (monotonic)."""
        self.sent_until_s: list[float] = []
        """Where in the clip each frame ends (seconds)."""
        self.first_partial_at: float | None = None
        self.finals: list[tuple[float, str, float]] = []
        """Each final: when it came, its text, and where in the stream it ends."""
        self.failovers = 0
        self.warnings: list[str] = []
        self.fatal: dict[str, str] | None = None

    # ------------------------------------------------------------ feeding the core

    async def feed(self, clip: SpeechClip, real_time: bool) -> None:
        """Once the core is ready: the clip in frames (paced when ``real_time``), then stop."""
        await self.ready.wait()
        await self.inbox.put(
            StartMessage(
                sample_rate=SAMPLE_RATE, language=clip.language, session_id=self.session_id
            )
        )
        began = time.monotonic()
        for offset in range(0, len(clip.pcm), FRAME_BYTES):
            frame = clip.pcm[offset : offset + FRAME_BYTES]
            until_s = (offset + len(frame)) / 2 / SAMPLE_RATE
            if real_time:
                # A microphone has a frame to send once its audio was spoken.
                await asyncio.sleep(max(0.0, began + until_s - time.monotonic()))
            if not self.open:
                return
            await self.inbox.put(frame)
            self.sent_at.append(time.monotonic())
            self.sent_until_s.append(until_s)
        await self.inbox.put(StopMessage())

    def hang_up(self) -> None:
        """Nothing more goes in (the session ended)."""
        self.open = False
        self.inbox.close()

    # ------------------------------------------------------------ SessionClient

    def receive(self) -> AsyncIterator[ClientMessage]:
        """The clip's frames and control messages, in order, for the core."""
        return self.inbox.items()

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        """Note when the core's message came."""
        now = time.monotonic()
        data = message if isinstance(message, dict) else message.model_dump(by_alias=True)
        kind = data.get("type")
        if kind == "ready":
            self.ready_at = now
            self.backend = data.get("backend")
            self.ready.set()
        elif kind == "partial" and self.first_partial_at is None:
            self.first_partial_at = now
        elif kind == "final":
            self.finals.append((now, str(data.get("text") or ""), float(data.get("end") or 0.0)))
        elif kind == "failover":
            self.backend = data.get("to") or self.backend
            self.failovers += 1

    async def error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        """Note an error; a fatal one fails the request."""
        del extra
        if fatal:
            self.fatal = request_error(code, message)
        else:
            self.warnings.append(code)

    async def refuse(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        """The core found no backend: the request failed."""
        await self.error(code, message, fatal=True, **extra)
        await self.close(close_code)

    async def close(self, code: int) -> None:
        """The session is over."""
        del code
        self.hang_up()

    # ------------------------------------------------------------ the row

    def _sent_when(self, end_s: float) -> float:
        """When the audio up to ``end_s`` of the stream had been sent."""
        index = bisect.bisect_left(self.sent_until_s, end_s - 1e-3)
        return self.sent_at[min(index, len(self.sent_at) - 1)]

    def row(self, clip: SpeechClip, client: int) -> dict[str, Any]:
        """What this session measured."""
        row: dict[str, Any] = {
            "clip": clip.name,
            "client": client,
            "audio_s": clip.duration_s,
            "backend": self.backend,
            "failovers": self.failovers,
            "ready_ms": None if self.ready_at is None else _ms(self.ready_at - self.opened_at),
            "first_partial_ms": None,
            "final_ms": None,
            "wer": None,
            "transcript": " ".join(text for _, text, _ in self.finals if text.strip()),
            "reference": clip.text,
            "warnings": self.warnings,
            "error": self.fatal,
        }
        if self.sent_at and self.first_partial_at is not None:
            row["first_partial_ms"] = _ms(self.first_partial_at - self.sent_at[0])
        if self.fatal is None and not self.finals:
            row["error"] = {
                "code": "no_transcript",
                "message": "the session ended without a final transcript",
            }
        if row["error"] is None and self.sent_at:
            came, _, end_s = self.finals[-1]
            row["final_ms"] = _ms(max(0.0, came - self._sent_when(end_s)))
            row["wer"] = round(error_rate(clip.text, row["transcript"]), 2)
        return row


async def stream_clip(
    state: GatewayState, principal: Principal, clip: SpeechClip, client: int, real_time: bool
) -> dict[str, Any]:
    """Stream ``clip`` through the session core as client number ``client``; its row."""
    listener = BenchmarkListener(new_session_id())
    refused = state.limits.admit_session(principal.limit_key)
    if refused is not None:
        listener.fatal = request_error(refused.code, refused.message)
        return listener.row(clip, client)
    async with SessionSlot(state, principal):
        feeder = asyncio.create_task(listener.feed(clip, real_time))
        try:
            await GatewayStream(listener, state, listener.session_id).run()
        finally:
            listener.hang_up()
            await stop_task(feeder)
    return listener.row(clip, client)


class SynthesisTimer:
    """Takes the audio events of one synthesis and notes the first audio's time."""

    def __init__(self) -> None:
        self.rate = 0
        self.samples = 0
        self.first_audio_at: float | None = None

    async def write(self, event: Event) -> None:
        """One Wyoming audio event of the synthesis."""
        if AudioStart.is_type(event.type):
            self.rate = AudioStart.from_event(event).rate
        elif AudioChunk.is_type(event.type):
            chunk = AudioChunk.from_event(event)
            if self.first_audio_at is None:
                self.first_audio_at = time.monotonic()
            self.samples += len(chunk.audio) // chunk.width


async def synthesize_sentence(state: GatewayState, text: str, client: int) -> dict[str, Any]:
    """Speak ``text`` through the gateway's TTS routing as client ``client``; its row."""
    timer = SynthesisTimer()
    row: dict[str, Any] = {
        "sentence": text,
        "client": client,
        "backend": None,
        "first_chunk_ms": None,
        "total_ms": None,
        "audio_s": None,
        "rtf": None,
        "error": None,
    }
    began = time.monotonic()
    try:
        row["backend"] = await speak(
            state, timer.write, text, None, new_session_id(), record_as="benchmark_tts"
        )
    except VoiceMeshError as exc:
        row["error"] = request_error(exc.code, exc.message)
        return row
    elapsed = time.monotonic() - began
    if timer.first_audio_at is None or not timer.rate or not timer.samples:
        row["error"] = request_error("backend_error", "the synthesis came back without audio")
        return row
    audio_s = timer.samples / timer.rate
    row.update(
        first_chunk_ms=_ms(timer.first_audio_at - began),
        total_ms=_ms(elapsed),
        audio_s=round(audio_s, 3),
        rtf=round(elapsed / audio_s, 4),
    )
    return row


def spread(values: list[float]) -> dict[str, float] | None:
    """Median and 95th percentile (linear interpolation), or None without values."""
    if not values:
        return None
    return {
        "median": round(float(np.median(values)), 1),
        "p95": round(float(np.percentile(values, 95)), 1),
    }


def _present(rows: list[dict[str, Any]], field: str) -> list[float]:
    return [float(r[field]) for r in rows if r.get(field) is not None]


def _counted(rows: list[dict[str, Any]]) -> dict[str, int]:
    return {"requests": len(rows), "errors": sum(1 for r in rows if r["error"] is not None)}


def summarize(stt: list[dict[str, Any]], tts: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's summary over the rows that succeeded (errors are counted, not averaged)."""
    summary: dict[str, Any] = {}
    if stt:
        wers = _present(stt, "wer")
        summary["stt"] = {
            **_counted(stt),
            "ready_ms": spread(_present(stt, "ready_ms")),
            "first_partial_ms": spread(_present(stt, "first_partial_ms")),
            "final_ms": spread(_present(stt, "final_ms")),
            "wer_mean": round(float(np.mean(wers)), 2) if wers else None,
        }
    if tts:
        rtfs = _present(tts, "rtf")
        summary["tts"] = {
            **_counted(tts),
            "first_chunk_ms": spread(_present(tts, "first_chunk_ms")),
            "rtf_median": round(float(np.median(rtfs)), 4) if rtfs else None,
        }
    return summary
