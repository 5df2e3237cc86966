"""Messages that cross service lines, as pydantic models.

Client -> STT (gateway or engine), over ``WS /ws/transcribe``:
  * optional first text message :class:`StartMessage`;
  * binary audio frames in the declared encoding (``opus``: one raw Opus packet each);
  * ``<flush>`` (the seed protocol) or :class:`FlushMessage`; :class:`StopMessage`.

STT -> client: :class:`ReadyMessage`, :class:`PartialMessage`, :class:`FinalMessage`,
:class:`VadMessage`, :class:`FailoverMessage`, :class:`AckMessage`, :class:`ResumedMessage`,
:class:`ErrorMessage`.

Detector (``WS /ws/detect``) speaks the seed format: :class:`DetectionMessage` per frame
group, plus :class:`SpeechStartEvent` / :class:`SpeechEndEvent`; bad input gets
:class:`DetectorError` (``{"error": "..."}``).

All times are seconds from the start of the stream.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from voicemesh.errors import BadRequest

Encoding = Literal["pcm_s16le", "pcm_f32le", "opus"]
FinalReason = Literal["endpoint", "flush", "stop", "max_length"]
FLUSH_TEXT = "<flush>"
MIN_SAMPLE_RATE = 8000
MAX_SAMPLE_RATE = 192000

SAMPLE_RATE = 16000
"""The rate of the audio between gateway and engines (mono PCM16), and the default."""

# WebSocket close codes, as the clients read them.
CLOSE_NORMAL = 1000
"""The session ended as asked (``stop``)."""
CLOSE_POLICY = 1008
"""The request names no WebSocket route here."""
CLOSE_INTERNAL = 1011
"""The server failed on this session."""
CLOSE_TRY_AGAIN = 1013
"""No capacity now (``busy``, ``rate_limited``, ``no_backend``): try again later."""
CLOSE_UNAUTHORIZED = 4401
"""No API key, or a key that is not valid."""
CLOSE_FORBIDDEN = 4403
"""A valid key without the rights the route needs."""
CLOSE_IDLE = 4408
"""The client sent nothing for the idle timeout (``idle_timeout``); finals owed came first."""
CLOSE_RESUMED = 4409
"""Another connection resumed this session (``session_resumed``); this one is over."""

OWNER_HEADER = "X-VoiceMesh-Key-Id"
"""The caller's key identity the gateway sets on calls to ``tts_clone`` (owner of voices)."""
INTERNAL_TOKEN_HEADER = "X-VoiceMesh-Internal-Token"
"""The gateway's internal token on every call it makes to an engine (``internal_token``)."""
ANONYMOUS = "anonymous"
"""The principal (and voice owner) of every caller while auth is off."""


class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    def dumps(self) -> str:
        """Serialise to the JSON text sent on the wire."""
        return self.model_dump_json(exclude_none=True)


# ---------------------------------------------------------------- client -> server


class StartMessage(_Message):
    """Declares the audio format of the binary frames that follow."""

    type: Literal["start"] = "start"
    sample_rate: int = Field(SAMPLE_RATE, ge=MIN_SAMPLE_RATE, le=MAX_SAMPLE_RATE)
    encoding: Encoding = "pcm_s16le"
    channels: int = Field(1, ge=1, le=2)
    language: str | None = None
    session_id: str | None = None
    prompt: str | None = None
    """Text to guide the engine (Whisper's prompt: names, spellings, style)."""
    vad_threshold: float | None = Field(None, gt=0, lt=1)
    """Speech probability at which the engine's VAD hears speech (None: its own)."""
    min_silence_s: float | None = Field(None, ge=0, le=10)
    """Silence that ends an utterance (None: the engine's own)."""
    preroll_s: float | None = Field(None, ge=0, le=10)
    """Audio kept from before the detected speech start (None: the engine's own)."""
    resume_token: str | None = Field(None, max_length=200)
    """Carry on the session this token came with (its ``ready``) instead of a new one."""
    last_final: int | None = Field(None, ge=-1)
    """With ``resume_token``: the ``index`` of the last final received (-1: none); the
    server sends again the finals after it."""


class FlushMessage(_Message):
    """Finalize the current utterance now."""

    type: Literal["flush"] = "flush"
    reason: str | None = None
    until: float | None = None
    """Only finalize an utterance that began before this stream time (seconds)."""


class StopMessage(_Message):
    """Finalize the current utterance and close the session."""

    type: Literal["stop"] = "stop"


ControlMessage = Annotated[StartMessage | FlushMessage | StopMessage, Field(discriminator="type")]
_CONTROL = TypeAdapter(ControlMessage)


def parse_control(text: str) -> StartMessage | FlushMessage | StopMessage:
    """Parse a text frame from a client; raise :class:`BadRequest` with a clear reason."""
    if text.strip() == FLUSH_TEXT:
        return FlushMessage()
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BadRequest(
            "text frames must be JSON control messages or '<flush>'", code="bad_message"
        ) from exc
    if not isinstance(data, dict) or "type" not in data:
        raise BadRequest("control message needs a 'type' field", code="bad_message")
    try:
        return _CONTROL.validate_python(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise BadRequest(
            f"invalid {data.get('type')!r} message: {where}: {first.get('msg')}",
            code="bad_message",
        ) from exc


# ---------------------------------------------------------------- server -> client


class Word(BaseModel):
    """One word with its time span."""

    word: str
    start: float
    end: float
    probability: float | None = None


class Segment(BaseModel):
    """A span of a final transcript."""

    start: float
    end: float
    text: str
    words: list[Word] | None = None
    avg_logprob: float | None = None
    """Mean log-probability of the segment's tokens (the decoder's own confidence)."""


class ReadyMessage(_Message):
    """The session is open; says which engine serves it."""

    type: Literal["ready"] = "ready"
    session_id: str
    engine: str
    device: str
    model: str
    sample_rate: int = SAMPLE_RATE
    backend: str | None = None
    resume_token: str | None = None
    """Send it back in a ``start`` after a dropped connection to resume this session."""
    languages: list[str] | None = None
    """The codes the model decodes (an engine's ``ready`` to the gateway, which refuses a
    ``start`` in another language before it takes that start's audio format)."""


class PartialMessage(_Message):
    """A revisable hypothesis of the utterance in progress."""

    type: Literal["partial"] = "partial"
    utterance_id: int
    text: str
    stable_text: str = ""
    start: float
    end: float


class FinalMessage(_Message):
    """The finished transcript of one utterance; never revised."""

    type: Literal["final"] = "final"
    utterance_id: int
    text: str
    segments: list[Segment] = []
    start: float
    end: float
    language: str | None = None
    engine: str
    device: str
    model: str
    latency_ms: float
    reason: FinalReason = "endpoint"
    backend: str | None = None
    index: int | None = None
    """The final's place in the session, from 0 (a resuming client names the last one)."""


class VadMessage(_Message):
    """Speech started or ended (from the detector or the engine's own VAD)."""

    type: Literal["vad"] = "vad"
    event: Literal["speech_start", "speech_end"]
    t: float
    source: str = "engine"
    confirmed: bool | None = None
    text: str | None = None


class FailoverMessage(_Message):
    """The gateway moved the session to another backend and replayed its audio."""

    type: Literal["failover"] = "failover"
    from_: str | None = Field(None, alias="from", serialization_alias="from")
    to: str
    replayed_ms: float
    reason: str

    model_config = ConfigDict(populate_by_name=True)

    def dumps(self) -> str:
        """Serialise with the ``from`` key (a Python keyword)."""
        return self.model_dump_json(exclude_none=True, by_alias=True)


class AckMessage(_Message):
    """The server holds the session's audio up to ``received_s`` where a resume finds it."""

    type: Literal["ack"] = "ack"
    received_s: float


class ResumedMessage(_Message):
    """A resume took: the session goes on; send the audio from ``received_s`` on."""

    type: Literal["resumed"] = "resumed"
    session_id: str
    received_s: float
    """Stream time of the audio the server holds; the client sends what follows."""
    replayed_ms: float
    """Audio since the last final, given again to the engine."""
    finals_resent: int
    """Finals after the client's ``last_final`` sent again (they follow this message)."""
    finals_missing: int = 0
    """Finals after ``last_final`` the server no longer keeps (0 unless long gone)."""


class ErrorMessage(_Message):
    """An error; ``fatal`` says whether the server will close the socket after it."""

    type: Literal["error"] = "error"
    code: str
    message: str
    fatal: bool = False


ServerMessage = Annotated[
    ReadyMessage
    | PartialMessage
    | FinalMessage
    | VadMessage
    | FailoverMessage
    | AckMessage
    | ResumedMessage
    | ErrorMessage,
    Field(discriminator="type"),
]
SERVER_MESSAGE: TypeAdapter[Any] = TypeAdapter(ServerMessage)


# ---------------------------------------------------------------- detector (seed format)


class DetectionMessage(BaseModel):
    """Seed detector output for a frame or group of frames."""

    speech_detected: bool
    probability: float
    t: float


class SpeechStartEvent(_Message):
    """The detector saw speech begin at ``t``."""

    type: Literal["speech_start"] = "speech_start"
    t: float


class SpeechEndEvent(_Message):
    """Speech that began at ``start`` ended at ``t``; ``confirmed`` by Whisper tiny."""

    type: Literal["speech_end"] = "speech_end"
    t: float
    start: float
    confirmed: bool
    text: str = ""


class DetectorError(BaseModel):
    """Seed-format error for bad detector input; the socket stays open."""

    error: str
    code: str = "bad_frame"
