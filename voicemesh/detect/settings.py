"""Settings of the speech detector (``stt_tiny_ws`` sets the env prefix and port)."""

from __future__ import annotations

from pydantic import Field

from voicemesh.settings import ServiceSettings


class DetectorSettings(ServiceSettings):
    """Settings of a speech detector (subclassed per service with a prefix)."""

    kind: str = "stt_tiny_ws"
    """Service name in the registry."""
    port: int = 8091
    model: str = "tiny.en"
    """Whisper model that confirms speech (bundled tiny.en by default)."""
    confirm: bool = True
    """Decode each detected segment with Whisper to confirm it is speech."""
    cpu_threads: int = Field(1, ge=0)
    """Threads for the confirming decode; one leaves the other cores to the STT engine."""
    threshold: float = Field(0.5, gt=0, lt=1)
    """Speech probability at or above which a window is speech."""
    min_speech_s: float = Field(0.1, ge=0.03)
    """Speech shorter than this does not start an utterance."""
    min_silence_s: float = Field(0.5, ge=0.1)
    """Silence that ends an utterance."""
    max_confirm_s: float = Field(20.0, ge=1, le=30)
    """Only the last this-many seconds of a long segment are decoded to confirm it."""
