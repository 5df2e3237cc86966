"""Request bodies of the TTS HTTP API, shared by ``tts_vits`` and the gateway.

Pure pydantic: importing it loads no model library.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from voicemesh.tts.encoding import AudioFormat

MIN_SPEED = 0.5
MAX_SPEED = 2.0
MIN_VOLUME_DB = -60.0
MAX_VOLUME_DB = 25.0
"""The specification's loudest setting; :func:`voicemesh.tts.encoding.limit_peaks` keeps it
from clipping."""


class SynthesizeRequest(BaseModel):
    """``POST /v1/synthesize``."""

    text: str
    """Text to speak (split at sentence boundaries; longer than the service limit: 413)."""
    voice: str | None = None
    """Voice id from ``GET /v1/voices``; None: the service's default voice."""
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


class CompareCandidate(BaseModel):
    """One voice and speed to try in ``POST /v1/compare``."""

    voice: str
    speed: float = Field(1.0, ge=MIN_SPEED, le=MAX_SPEED)


class CompareRequest(BaseModel):
    """``POST /v1/compare``: one text, several candidates."""

    text: str
    candidates: list[CompareCandidate] = Field(min_length=1)
    format: AudioFormat = "wav"
    """Format of each candidate's inline (base64) audio."""
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    """Output rate of every candidate; None: each voice's own."""
