"""Request bodies of the TTS HTTP API, shared by ``tts_vits`` and the gateway.

Pure pydantic: importing it loads no model library.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from voicemesh.tts.encoding import AudioFormat

MIN_SPEED = 0.5
MAX_SPEED = 2.0
MIN_VOLUME_DB = -60.0
MAX_VOLUME_DB = 25.0
"""The specification's loudest setting; :func:`voicemesh.tts.encoding.limit_peaks` keeps it
from clipping."""


class VoiceChoice(BaseModel):
    """How a request names its voice: a catalogue id, or a model and a speaker index.

    Fields a body does not define are refused (422 ``unknown_field``), so a misspelt
    option is never silently ignored.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    """A catalogue model id (``GET /v1/voices`` shows each voice's ``model``)."""
    voice_id: int | str | None = None
    """A voice id, or the speaker index of ``model`` (an int, or ``<model>:<index>``)."""
    voice: str | None = None
    """The earlier name of ``voice_id`` (a catalogue id); still accepted."""

    def voice_ref(self) -> int | str | None:
        """``voice_id``, or ``voice`` when only that is given."""
        return self.voice_id if self.voice_id is not None else self.voice


class SynthesizeRequest(VoiceChoice):
    """``POST /v1/synthesize``."""

    text: str
    """Text to speak (split at sentence boundaries; longer than the service limit: 413)."""
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)
    """Speaking rate: 0.5 (slow) to 2.0 (fast)."""
    volume_db: float = Field(0.0, ge=MIN_VOLUME_DB, le=MAX_VOLUME_DB)
    """Gain in decibels; a limiter keeps the peaks under full scale, so loud never clips."""
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    """Output rate (resampled); None: the voice's own. Opus/MP3 round up to a codec rate."""
    format: AudioFormat = "wav"
    """wav | pcm (16-bit little-endian mono) | flac | mp3 | opus (in Ogg)."""
    stream: bool = False
    """Chunked response, sentence by sentence; the first clause comes first."""


class CompareCandidate(VoiceChoice):
    """One voice and speed to try in ``POST /v1/compare``."""

    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)


CompareMetric = Literal["rtf", "latency_ms", "duration_seconds"]
"""What a compare measures and can recommend by (lowest wins)."""
DEFAULT_METRICS: tuple[CompareMetric, ...] = ("rtf",)


class CompareRequest(BaseModel):
    """``POST /v1/compare``: one text, several candidates."""

    model_config = ConfigDict(extra="forbid")

    text: str
    candidates: list[CompareCandidate] = Field(min_length=1)
    format: AudioFormat = "wav"
    """Format of each candidate's inline (base64) audio."""
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    """Output rate of every candidate; None: each voice's own."""
    metrics: list[CompareMetric] = Field(
        default_factory=lambda: list(DEFAULT_METRICS), min_length=1
    )
    """What to measure; the recommendation is for the first (lowest value wins)."""
