"""Settings of the VITS text-to-speech service (``tts_vits`` sets the env prefix)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field

from voicemesh.settings import ServiceSettings


class TtsSettings(ServiceSettings):
    """Settings of a VITS text-to-speech service (subclassed per service with a prefix)."""

    kind: str = "tts_vits"
    """Service name in the registry."""
    port: int = Field(8094, ge=1, le=65535)
    """Port to bind."""
    default_voice: str = "en_US-joe-medium"
    """Voice used when a request names none (loaded at start)."""
    models_dir: Path | None = None
    """Model folder; None: the shared cache (``VOICEMESH_MODELS_DIR`` or ``<home>/models``)."""
    catalogue_file: Path | None = None
    """Voice catalogue JSON; None: the one shipped in ``voicemesh/tts/voices.json``."""
    num_threads: int = Field(1, ge=1, le=32)
    """ONNX Runtime threads per synthesis (1 gives the best throughput on 2 cores)."""
    pool_size: int = Field(2, ge=1, le=16)
    """Engine instances per loaded model: syntheses that run in parallel."""
    piper_runtime: Literal["onnxruntime", "sherpa-onnx"] = "onnxruntime"
    """What runs Piper voices: onnxruntime, as Piper itself does (about 17% faster here), or
    sherpa-onnx; every other family runs on sherpa-onnx."""
    decoder_int8: bool = False
    """Piper voices on onnxruntime: run the decoder's convolutions in 8 bits, calibrated when
    the voice loads (``voicemesh.tts.int8``): about 25% faster synthesis, at a waveform
    20 dB from the float decoder's and a noise floor in pauses of -55 dBFS (float: -64)."""
    solo_threads: int | None = Field(None, ge=1, le=32)
    """Threads of the extra engine instance used while only one synthesis runs, so one
    request alone gets every core; None: one per usable core (at most 4); a value no
    larger than ``num_threads`` turns the solo instance off."""

    max_concurrent: int = Field(2, ge=1, le=256)
    """Requests synthesising at once; more wait in the queue."""
    max_queue: int = Field(32, ge=0)
    """Requests that may wait for a slot; beyond this a request is refused (503 busy)."""
    queue_timeout_s: float = Field(15.0, gt=0)
    """Longest wait for a slot before a request is refused (503 busy)."""
    max_chars: int = Field(5000, ge=1)
    """Longest text accepted (413 beyond)."""
    max_compare_candidates: int = Field(6, ge=1, le=32)
    """Most candidates one compare request may hold."""
    duration_noise: float | None = Field(0.0, ge=0.0, le=2.0)
    """VITS duration noise (noise_w); 0 gives steady timing, which Whisper base hears a little
    better (WER 5.3-7.9% against 5-10% with the voice's own 0.8); None keeps each model's."""
    voice_noise: float | None = Field(0.333, ge=0.0, le=2.0)
    """VITS/Matcha sampling noise (noise_scale); Piper voices ship 0.667, whose draws Whisper
    base mishears more often (round-trip WER about 6.8% against 5.8% at 0.333, which still
    varies a little from call to call); None keeps each model's."""
    preload: list[str] = Field(default_factory=list)
    """Catalogue model ids to load at start besides the default voice's."""
    max_drain_s: float = Field(60.0, ge=0)
    """On SIGTERM, how long running syntheses may take to finish."""

    @property
    def models_path(self) -> Path:
        """The resolved model folder (this service's, else the shared cache)."""
        return self.models_dir or self.common.models_path

    def resolved_solo_threads(self) -> int:
        """``solo_threads``, with None resolved to the cores this process may use (<= 4)."""
        if self.solo_threads is not None:
            return self.solo_threads
        return min(4, len(os.sched_getaffinity(0)))
