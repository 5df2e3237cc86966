"""Typed results of the Python client (pydantic; fields the gateway adds later are kept).

The streaming events are the protocol's own messages (:mod:`voicemesh.protocol`:
``ReadyMessage``, ``PartialMessage``, ``FinalMessage``, ``VadMessage``,
``FailoverMessage``, ``ErrorMessage``) plus :class:`ReconnectEvent`, which the client
itself emits when it had to open a new connection.
"""

from __future__ import annotations

import urllib.parse
from typing import Any, Literal, TypeAlias

import httpx
from pydantic import BaseModel, ConfigDict, Field

from voicemesh.protocol import (
    AckMessage,
    ErrorMessage,
    FailoverMessage,
    FinalMessage,
    PartialMessage,
    ReadyMessage,
    ResumedMessage,
    VadMessage,
)


class _Result(BaseModel):
    # Extra fields stay (reachable as attributes and in model_extra): a newer gateway's
    # additions never break an older client.
    model_config = ConfigDict(extra="allow")


class TranscriptSegment(_Result):
    """One span of a transcript."""

    text: str
    start_time: float
    end_time: float
    confidence: float | None = None
    """exp(avg_logprob): the geometric mean of the segment's token probabilities."""


class TranscriptionMetadata(_Result):
    """Who served a transcription and how fast."""

    engine: str | None = None
    device: str | None = None
    backend: str | None = None
    failovers: int = 0
    rtf: float | None = None
    model_load_time_ms: float | None = None


class Transcription(_Result):
    """``POST /v1/asr/transcribe``'s JSON answer."""

    text: str
    model: str | None = None
    language: str | None = None
    confidence: float | None = None
    duration_seconds: float | None = None
    processing_time_ms: float | None = None
    segments: list[TranscriptSegment] = Field(default_factory=list)
    metadata: TranscriptionMetadata = Field(default_factory=TranscriptionMetadata)


class Synthesis(BaseModel):
    """Audio from ``POST /v1/tts/synthesize`` and what its headers say about it."""

    audio: bytes
    media_type: str
    voice: str | None = None
    voice_name: str | None = None
    speaker_id: int | None = None
    model: str | None = None
    engine: str | None = None
    sample_rate: int | None = None
    duration_seconds: float | None = None
    rtf: float | None = None
    backend: str | None = None
    request_id: str | None = None

    @classmethod
    def from_response(cls, response: httpx.Response) -> Synthesis:
        """Read the audio and the ``X-VoiceMesh-*`` headers of a 200 answer."""
        headers = response.headers

        def number(name: str) -> float | None:
            try:
                return float(headers[f"x-voicemesh-{name}"])
            except (KeyError, ValueError):
                return None

        name = headers.get("x-voicemesh-voice-name")
        speaker = number("speaker-id")
        rate = number("sample-rate")
        return cls(
            audio=response.content,
            media_type=headers.get("content-type", "application/octet-stream"),
            voice=headers.get("x-voicemesh-voice"),
            voice_name=urllib.parse.unquote(name) if name else None,
            speaker_id=int(speaker) if speaker is not None else None,
            model=headers.get("x-voicemesh-model"),
            engine=headers.get("x-voicemesh-engine"),
            sample_rate=int(rate) if rate is not None else None,
            duration_seconds=number("duration"),
            rtf=number("rtf"),
            backend=headers.get("x-voicemesh-backend"),
            request_id=headers.get("x-request-id"),
        )


class VoiceCandidate(BaseModel):
    """One voice (and speed) to try in :meth:`compare_voices`."""

    model_config = ConfigDict(extra="forbid")

    voice_id: int | str | None = None
    model: str | None = None
    speed: float = 1.0


class CompareMetrics(_Result):
    """What a compare measured for one candidate."""

    rtf: float | None = None
    latency_ms: float | None = None
    duration_seconds: float | None = None


class ComparedVoice(_Result):
    """One candidate of a compare, with the URL of its audio (this key only, a few minutes)."""

    voice_id: int | str | None = None
    voice: str | None = None
    voice_name: str | None = None
    model: str | None = None
    speed: float | None = None
    audio_url: str
    metrics: CompareMetrics = Field(default_factory=CompareMetrics)
    preferred: bool = False


class Recommendation(_Result):
    """Which candidate a compare recommends, by which metric, and why (with the numbers)."""

    for_: str = Field(alias="for")
    recommended: int | str | None = None
    index: int | None = None
    reason: str


class Comparison(_Result):
    """``POST /v1/tts/compare``'s answer."""

    results: list[ComparedVoice]
    recommendation: Recommendation

    @property
    def preferred(self) -> ComparedVoice | None:
        """The recommended candidate."""
        return next((r for r in self.results if r.preferred), None)


class ClonedVoice(_Result):
    """A voice profile made by :meth:`clone_voice` (speak with it through its ``voice_id``)."""

    voice_id: str
    name: str
    language: str | None = None
    prompt_text: str | None = None
    prompt_source: str | None = None
    duration_s: float | None = None
    sample_rate: int | None = None
    consent: bool = False
    quality: dict[str, Any] = Field(default_factory=dict)
    created_at: float | None = None


class MeshStatus(_Result):
    """``GET /v1/admin/status``: the gateway's view of the mesh."""

    service: str | None = None
    version: str | None = None
    instance_id: str | None = None
    uptime_s: float | None = None
    mode: str | None = None
    redis: str | None = None
    auth: str | None = None
    sessions: dict[str, Any] = Field(default_factory=dict)
    services: dict[str, list[dict[str, Any]]] = Field(default_factory=dict)
    stt_route: list[str] = Field(default_factory=list)
    requests: dict[str, Any] = Field(default_factory=dict)
    status: str | None = None
    """``ok``, or ``degraded`` with ``status_reasons``."""
    status_reasons: list[str] = Field(default_factory=list)
    uptime_seconds: float | None = None
    memory_usage_mb: float | None = None
    """Resident memory of the gateway and every replica, summed (``usage_by_replica``)."""
    cpu_usage_percent: float | None = None
    gpu_memory_mb: float | None = None
    """GPU memory in use by the replicas on a GPU; None where none is."""
    usage_by_replica: list[dict[str, Any]] = Field(default_factory=list)
    loaded_models: dict[str, list[str]] = Field(default_factory=dict)
    """``{"asr": [...], "tts": [...]}``: the models loaded somewhere in the mesh."""
    model_status: dict[str, str] = Field(default_factory=dict)
    request_stats: dict[str, Any] = Field(default_factory=dict)
    """``total_requests``, ``asr_requests``, ``tts_requests``, ``avg_response_time_ms``,
    ``error_rate_percent`` (this gateway's)."""


class StatusEvent(BaseModel):
    """One message of ``WS /v1/ws/status``: a ``status_update`` or a gateway event.

    ``data`` is the message's payload whether the gateway wraps it in ``data`` (the
    specification's shape) or sends its fields beside ``type`` (the shape before it).
    """

    type: str
    timestamp: float | str | None = None
    data: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> StatusEvent:
        """Either shape of a status message."""
        stamp = message.get("timestamp", message.get("ts"))
        if isinstance(message.get("data"), dict):
            data = message["data"]
        else:
            data = {k: v for k, v in message.items() if k not in {"type", "ts", "timestamp"}}
        return cls(type=str(message.get("type", "")), timestamp=stamp, data=data)


class ReconnectEvent(BaseModel):
    """The client lost its connection mid-stream and opened a new one.

    Mostly the new connection resumes the server session (``resumed``): the client
    sends the audio after what the gateway held (``replayed_s``) and gets the finals it
    missed. Otherwise it is a new session, sent again the audio no final had covered;
    then the partial in progress is decoded anew (``lost_partial``).
    """

    type: Literal["reconnect"] = "reconnect"
    attempt: int
    """1 for the first reconnect of this stream."""
    reason: str
    """Why the previous connection ended."""
    previous_session_id: str | None = None
    resumed: bool = False
    """The server session went on (else the connection began a new one)."""
    replayed_s: float = 0.0
    """Audio sent again: after what the gateway held (resumed), or since the last final."""
    lost_audio_s: float = 0.0
    """Audio no final covered that had already left the client's replay buffer: never
    transcribed."""
    lost_partial: str | None = None
    """The partial text of the utterance in progress; the new session decodes it again."""
    offset_s: float = 0.0
    """Where the new session's time 0 sits on the stream's clock (its times are shifted
    by this, so they stay continuous)."""


StreamEvent: TypeAlias = (
    ReadyMessage
    | PartialMessage
    | FinalMessage
    | VadMessage
    | FailoverMessage
    | AckMessage
    | ResumedMessage
    | ErrorMessage
    | ReconnectEvent
)
"""What :meth:`AsyncVoiceMeshClient.stream` yields."""
