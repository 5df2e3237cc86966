"""Settings of a streaming Whisper service (``stt_cpu_ws`` and ``stt_gpu_ws`` set the prefix)."""

from __future__ import annotations

import os

from pydantic import Field

from voicemesh.settings import ServiceSettings
from voicemesh.stt.load import AdmissionPolicy
from voicemesh.stt.script import ChineseScript
from voicemesh.stt.streaming_rules import StreamingConfig
from voicemesh.stt.types import Device, EngineName
from voicemesh.stt.vad import EndpointerConfig


class SttSettings(ServiceSettings):
    """Settings of a streaming Whisper service (subclassed per service with a prefix)."""

    kind: str = "stt_cpu_ws"
    """Service name in the registry."""
    model: str = "base"
    """Bundled name (base, tiny.en), a CTranslate2 folder, a .pt checkpoint or a hub name."""
    engine: EngineName | None = None
    """Force an engine; by default it follows the model's form."""
    device: Device = "cpu"
    """cpu, cuda, or auto (cuda when present)."""
    compute_type: str | None = None
    """CTranslate2 compute type; default int8 on CPU, float16 on CUDA."""
    cpu_threads: int = Field(0, ge=0)
    """Threads per decode on CPU (0: the cores shared out between the workers)."""
    workers: int = Field(2, ge=1, le=16)
    """Decodes run at once. Two on CPU, so a final never waits behind a partial in
    progress: on 2 cores, 2 one-thread workers cut end-of-speech -> final p95 from
    1242 to 1095 ms against 1 two-thread worker (benchmarks/stt_stream.py)."""
    idle_ready_s: float = Field(90.0, gt=0)
    """A client that sends no ``start`` or audio this long after ``ready`` is closed
    (``idle_timeout``, 4408); keep it above the gateway's, which sees the same silence."""
    idle_session_s: float = Field(120.0, gt=0)
    """A client that sends no message this long mid-session is closed (``idle_timeout``,
    4408) after its finals; keep it above the gateway's ``idle_session_s``."""
    max_pending_bytes: int = Field(32 * 2**20, ge=1024)
    """Most audio (bytes as sent) a session's inbox holds ahead of the decoder (a client
    sending faster than real time); a frame past it gets a non-fatal ``audio_ahead``. The
    default (about 17 min of 16 kHz PCM16) sits above what the gateway forwards ahead."""
    beam_size: int = Field(5, ge=1, le=10)
    """Beam width of file transcription (POST /v1/transcribe)."""
    language: str | None = None
    """Default language of sessions; None detects it per utterance."""
    chinese_script: ChineseScript = "simplified"
    """Script of Chinese transcripts: simplified, traditional, or model (as Whisper wrote)."""
    partial_interval_s: float = Field(0.8, ge=0.1, le=10)
    """New audio between partial hypotheses."""
    min_silence_s: float = Field(0.5, ge=0.1, le=5)
    """Silence that ends an utterance."""
    silence_onset_s: float = Field(0.1, ge=0.03, le=5)
    """Silence after which the final is decoded speculatively."""
    hold_s: float = Field(0.5, ge=0, le=5)
    """More silence a doubtful final waits for before it is sent (0: never hold). If the
    speaker goes on, the pause was a hesitation and the utterance is decoded whole."""
    hold_logprob: float = Field(-0.5, le=0)
    """Finals whose decode scores below this average log-probability are doubtful (held)."""
    max_utterance_s: float = Field(24.0, ge=5, le=29)
    """Longest utterance before it is cut (Whisper sees 30 s at most)."""
    use_prefix: bool = False
    """Force partial decodes to continue the stable text (steadier partials)."""
    final_prefix: bool = False
    """Force finals to continue the stable text too (locks in early mistakes)."""
    final_beam_size: int = Field(5, ge=1, le=10)
    """Beam width of finals (partials are greedy)."""
    max_sessions: int = Field(32, ge=1)
    """Sessions beyond this are refused (the gateway then tries another replica)."""
    admit_max_final_wait_s: float = Field(0.5, gt=0)
    """New sessions are refused (``busy``) while finals wait longer than this for a
    decode worker (p90 over the last 10 s): the replica is not keeping up. With the
    0.5 s endpoint before it, a final that waits longer misses 1 s after speech. A
    replica with fewer sessions than decode workers always admits one more."""
    admit_essential_share: float = Field(0.4, gt=0, le=1)
    """A new session is refused when the measured cost of finals per session, times the
    sessions with it, would pass this share of the decode workers' time (the rest is
    for partials, and on one host for the detector, the gateway and the VAD)."""
    busy_retry_after_s: int = Field(3, ge=1)
    """``retry_after`` of a refused session."""
    batch_max: int = Field(1, ge=1, le=64)
    """Decodes of several sessions run as one batched call, up to this many (1: off)."""
    batch_wait_s: float = Field(0.005, ge=0, le=0.1)
    """How long a worker waits for more jobs to join a batch."""
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    """Largest file accepted by POST /v1/transcribe."""
    max_drain_s: float = Field(300.0, ge=0)
    """On SIGTERM, how long live sessions may take to finish before the replica exits."""
    max_upload_seconds: float = Field(3600.0, gt=0)
    """Longest audio accepted by POST /v1/transcribe."""

    def admission_policy(self) -> AdmissionPolicy:
        """Admission and shedding thresholds."""
        return AdmissionPolicy(
            max_final_wait_s=self.admit_max_final_wait_s,
            max_essential_share=self.admit_essential_share,
            retry_after_s=self.busy_retry_after_s,
        )

    def decode_threads(self) -> int:
        """CPU threads of one decode: ``cpu_threads``, or the cores over the workers."""
        if self.cpu_threads:
            return self.cpu_threads
        return max(1, available_cores() // self.workers)

    def streaming_config(self, language: str | None) -> StreamingConfig:
        """The per-session tuning these settings describe."""
        return StreamingConfig(
            language=language or self.language,
            partial_interval_s=self.partial_interval_s,
            max_utterance_s=self.max_utterance_s,
            use_prefix=self.use_prefix,
            final_prefix=self.final_prefix,
            final_beam_size=self.final_beam_size,
            hold_s=self.hold_s,
            hold_logprob=self.hold_logprob,
            endpointer=EndpointerConfig(
                min_silence_s=self.min_silence_s, silence_onset_s=self.silence_onset_s
            ),
        )


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
