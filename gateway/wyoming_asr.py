"""Wyoming speech-to-text as a thin adapter over the gateway's session core.

Home Assistant sends ``transcribe`` (a language, maybe a model name), ``audio-start``,
``audio-chunk`` events and ``audio-stop``, then reads until ``transcript``. Each
``audio-start`` opens one :class:`~gateway.stream.GatewayStream`, the same session
core a WebSocket client gets (routing, detector, failover with replay, stall watch,
metrics); its client is a :class:`WyomingTranscription`, which turns Wyoming audio
into the core's frames and the core's messages into Wyoming events:

* ``ready`` -> ``transcript-start`` (its ``context`` names the backend);
* new stable text of a ``partial``, and what a ``final`` adds -> ``transcript-chunk``
  (each chunk appends to the ones before: joined, they spell the transcript);
* the end of the session -> ``transcript`` (every final, joined) and ``transcript-stop``;
* a fatal error or a refusal -> an ``error`` event and no transcript.

Audio of any rate, width (1-4 bytes) and channel count is accepted: 16-bit mono or
stereo goes to the core as it is, anything else as float32 mono; the core resamples
to 16 kHz PCM16 as it does for every client (:func:`core_audio`).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import BaseModel
from wyoming.asr import Transcript, TranscriptChunk, TranscriptStart, TranscriptStop
from wyoming.error import Error
from wyoming.event import Event, Eventable

from gateway.session_client import ClientInbox
from voicemesh.errors import BadAudio
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import MAX_SAMPLE_RATE, MIN_SAMPLE_RATE, StartMessage, StopMessage
from voicemesh.wire import ClientMessage

_LOGGER = logging.getLogger(__name__)

EventWriter = Callable[[Event], Awaitable[None]]
"""Sends one Wyoming event to the client (the connection serialises writes)."""
MAX_CHANNELS = 8
INBOX_FRAMES = 256
"""Frames waiting for the core; a full inbox slows the reading of the client's socket."""


def wyoming_language(language: str | None) -> str | None:
    """The engine's language code for Home Assistant's (``en-US`` -> ``en``); None: detect."""
    if not language or not language.strip():
        return None
    return language.strip().replace("_", "-").split("-")[0].lower()


@dataclass(frozen=True)
class WyomingAudioFormat:
    """The format an ``audio-start`` declares: rate in Hz, width in bytes, channels."""

    rate: int
    width: int
    channels: int

    def check(self) -> None:
        """BadAudio when the core cannot take this format."""
        if not MIN_SAMPLE_RATE <= self.rate <= MAX_SAMPLE_RATE:
            raise BadAudio(
                f"rate must be {MIN_SAMPLE_RATE}-{MAX_SAMPLE_RATE} Hz, got {self.rate}",
                code="bad_sample_rate",
            )
        if self.width not in (1, 2, 3, 4):
            raise BadAudio(f"width must be 1, 2, 3 or 4 bytes, got {self.width}")
        if not 1 <= self.channels <= MAX_CHANNELS:
            raise BadAudio(
                f"channels must be 1-{MAX_CHANNELS}, got {self.channels}", code="bad_channels"
            )

    @property
    def passes_through(self) -> bool:
        """16-bit mono or stereo: the core's decoder takes it as it is."""
        return self.width == 2 and self.channels <= 2

    def start_message(self, language: str | None, session_id: str) -> StartMessage:
        """The core's ``start`` for audio in this format once :func:`core_audio` made it."""
        return StartMessage(
            sample_rate=self.rate,
            encoding="pcm_s16le" if self.passes_through else "pcm_f32le",
            channels=self.channels if self.passes_through else 1,
            language=language,
            session_id=session_id,
        )


def core_audio(payload: bytes, fmt: WyomingAudioFormat, max_frame_bytes: int) -> list[bytes]:
    """A Wyoming chunk as frames for the core (each at most ``max_frame_bytes``).

    16-bit mono or stereo passes through; other widths (unsigned 8-bit, signed 24 or
    32-bit) and channel counts become float32 mono, the channels averaged.
    """
    block = fmt.width * fmt.channels
    if len(payload) % block:
        raise BadAudio(
            f"audio-chunk of {len(payload)} bytes is not whole samples of {fmt.width} bytes "
            f"x {fmt.channels} channel(s)",
            code="odd_length_frame",
        )
    if fmt.passes_through:
        data, frame_block = payload, block
    else:
        data, frame_block = _float32_mono(payload, fmt).tobytes(), 4
    step = max(frame_block, max_frame_bytes - max_frame_bytes % frame_block)
    return [data[i : i + step] for i in range(0, len(data), step)]


def _float32_mono(payload: bytes, fmt: WyomingAudioFormat) -> np.ndarray:
    raw = np.frombuffer(payload, dtype=np.uint8)
    if fmt.width == 1:  # Wyoming (like WAV) carries 8-bit audio unsigned
        samples = (raw.astype(np.float32) - 128.0) / 128.0
    elif fmt.width == 3:
        triples = raw.reshape(-1, 3).astype(np.int32)
        value = triples[:, 0] | (triples[:, 1] << 8) | (triples[:, 2] << 16)
        value = np.where(value & 0x800000, value - 0x1000000, value)
        samples = value.astype(np.float32) / float(1 << 23)
    else:
        dtype = "<i2" if fmt.width == 2 else "<i4"
        scale = float(1 << (8 * fmt.width - 1))
        samples = np.frombuffer(payload, dtype=dtype).astype(np.float32) / scale
    mono: np.ndarray = samples.reshape(-1, fmt.channels).mean(axis=1, dtype=np.float32)
    return mono.astype("<f4")


@dataclass
class TranscriptDeltas:
    """Append-only transcript text from a session's partials and finals.

    A chunk is only ever text that will stay: the stable (committed) prefix of a
    partial, or what a final adds to it. Chunks carry their own leading space, so
    joined they spell the transcript. If a final revises text already sent (an engine
    that changed its stable text), the chunks cannot take it back: ``transcript``
    carries the corrected text.
    """

    finals: list[str] = field(default_factory=list)
    sent: str = ""
    """Everything sent as chunks so far, joined."""

    @property
    def transcript(self) -> str:
        """Every final so far, joined."""
        return " ".join(self.finals)

    def _advance(self, target: str) -> str | None:
        if len(target) <= len(self.sent) or not target.startswith(self.sent):
            return None
        delta = target[len(self.sent) :]
        self.sent = target
        return delta

    def on_partial(self, stable_text: str) -> str | None:
        """The chunk a partial's stable text adds, or None."""
        stable = " ".join(stable_text.split())
        if not stable:
            return None
        done = self.transcript
        return self._advance(f"{done} {stable}" if done else stable)

    def on_final(self, text: str) -> str | None:
        """Record a final; the chunk it adds to what was sent, or None."""
        words = " ".join(text.split())
        if words:
            self.finals.append(words)
        return self._advance(self.transcript)


class WyomingTranscription:
    """One Wyoming transcription as the session core's client (:class:`SessionClient`).

    The connection feeds it (:meth:`feed`, :meth:`stop`, :meth:`hang_up`); the core
    reads :meth:`receive` and answers through :meth:`send`, :meth:`error`,
    :meth:`refuse` and :meth:`close`.
    """

    def __init__(
        self,
        write: EventWriter,
        fmt: WyomingAudioFormat,
        *,
        session_id: str,
        language: str | None,
        max_frame_bytes: int,
        metrics: ServiceMetrics | None = None,
    ) -> None:
        self.write = write
        self.format = fmt
        self.session_id = session_id
        self.language = language
        self.max_frame_bytes = max_frame_bytes
        self.metrics = metrics
        self.open = True
        self.deltas = TranscriptDeltas()
        self.backend: str | None = None
        self.engine: str | None = None
        self.failovers = 0
        self.failed = False
        """A fatal error ended the session: the client got an ``error``, no transcript."""
        self.finished = False
        self._started = False
        self._inbox = ClientInbox(INBOX_FRAMES)
        self._inbox.put_nowait(fmt.start_message(language, session_id))

    # ------------------------------------------------------------ from the connection

    async def feed(self, payload: bytes) -> None:
        """One ``audio-chunk``'s audio, converted for the core (dropped once it is over)."""
        for frame in core_audio(payload, self.format, self.max_frame_bytes):
            if not self.open:
                return
            await self._inbox.put(frame)

    async def stop(self) -> None:
        """``audio-stop``: the core finalizes what it has and ends the session."""
        await self._inbox.put(StopMessage())

    def hang_up(self) -> None:
        """The client went away, or the core ended the session: nothing more goes in.

        The inbox is emptied (a feed blocked on a full one goes on and drops its audio)
        and ends with the end-of-input mark, so a core still reading sees it.
        """
        self.open = False
        self._inbox.close()

    # ------------------------------------------------------------ SessionClient

    def receive(self) -> AsyncIterator[ClientMessage]:
        """The client's audio and control messages, in order, until it stops or goes away."""
        return self._inbox.items()

    async def send(self, message: BaseModel | dict[str, Any]) -> None:
        """Translate one of the core's messages into Wyoming events."""
        data = message if isinstance(message, dict) else message.model_dump(by_alias=True)
        kind = data.get("type")
        if kind == "ready":
            self.backend = data.get("backend")
            self.engine = data.get("engine")
            self._started = True
            await self._write(TranscriptStart(language=self.language, context=self.context()))
        elif kind == "partial":
            await self._chunk(self.deltas.on_partial(str(data.get("stable_text") or "")))
        elif kind == "final":
            self.backend = data.get("backend") or self.backend
            await self._chunk(self.deltas.on_final(str(data.get("text") or "")))
        elif kind == "failover":
            self.backend = data.get("to")
            if data.get("reason") != "mode_change":
                self.failovers += 1
        elif kind == "error":
            _LOGGER.info("wyoming session %s: %s", self.session_id, data.get("message"))
        # vad and other events have no Wyoming counterpart in a transcription.

    async def error(self, code: str, message: str, *, fatal: bool = False, **extra: Any) -> None:
        """A Wyoming ``error`` event; a fatal one ends the transcription without a transcript."""
        del extra
        _LOGGER.info("wyoming session %s: %s: %s", self.session_id, code, message)
        if self.metrics is not None:
            self.metrics.error(code)
        if fatal:
            self.failed = True
        await self._write(Error(text=message, code=code))

    async def refuse(self, code: str, message: str, close_code: int, **extra: Any) -> None:
        """No backend (or no capacity): an ``error`` event, and the session ends."""
        await self.error(code, message, fatal=True, **extra)
        await self.close(close_code)

    async def close(self, code: int = 1000) -> None:
        """The session is over: send the transcript (once), unless it failed."""
        del code
        self.open = False
        await self.finish()

    # ------------------------------------------------------------ the answer

    def context(self) -> dict[str, Any]:
        """What the transcript events say about who served the session."""
        return {
            "voicemesh": {
                "session_id": self.session_id,
                "backend": self.backend,
                "engine": self.engine,
                "failovers": self.failovers,
            }
        }

    async def finish(self) -> None:
        """``transcript`` and ``transcript-stop``, once; nothing after a fatal error."""
        if self.finished or self.failed:
            return
        self.finished = True
        text = self.deltas.transcript
        await self._write(Transcript(text=text, language=self.language, context=self.context()))
        if self._started:
            await self._write(TranscriptStop())

    async def _chunk(self, text: str | None) -> None:
        if text:
            await self._write(TranscriptChunk(text=text))

    async def _write(self, eventable: Eventable) -> None:
        await self.write(eventable.event())
