"""Settings of the cloning service (``tts_clone`` sets the env prefix and port)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from voicemesh.clone.reference import ReferenceLimits
from voicemesh.settings import ServiceSettings


class CloneSettings(ServiceSettings):
    """Settings of the cloning service (``tts_clone`` sets the env prefix and port)."""

    kind: str = "tts_clone"
    """Service name in the registry."""
    port: int = 8095
    voices_dir: Path | None = None
    """Folder of reference recordings (default: ``<home>/voices``); a shared volume."""
    cache_dir: Path | None = None
    """Folder of cached results (default: ``<home>/clone-cache``)."""
    cache_max_bytes: int = Field(512 * 1024 * 1024, ge=0)
    """Size bound of the result cache; least recently used results go first (0: no cache)."""
    key_prefix: str = "voicemesh"
    """Prefix of the Redis keys for profiles and the cache index (the registry's is fixed)."""
    gptsovits_urls: list[str] = []
    """GPT-SoVITS api_v2 backends this replica registers (kind ``gptsovits_kind``)."""
    gptsovits_kind: str = "gpt_sovits"
    """Registry kind of GPT-SoVITS backends; every registered one is used."""
    gptsovits_voices_dir: str | None = None
    """Path of ``voices_dir`` as the backends see it (default: the same path)."""
    gptsovits_model_version: str = "gpt-sovits-v2"
    """Names the backend's weights; part of every cache key (change it with the weights)."""
    gptsovits_timeout_s: float = Field(120.0, gt=0)
    """Time a backend may take for one request before it counts as failed."""
    gptsovits_connect_timeout_s: float = Field(3.0, gt=0)
    """Time to connect to a backend."""
    gptsovits_queue_timeout_s: float = Field(30.0, gt=0)
    """Time a request may wait for a busy backend before falling back."""
    backend_refresh_s: float = Field(2.0, gt=0)
    """How often backends are probed, registered and re-read from the registry."""
    fallback: bool = True
    """Serve with the CPU engine when GPT-SoVITS fails or times out."""
    cpu_engine: bool = True
    """Load the WORLD-adapted VITS engine (the embedded default's only engine)."""
    vits_voice: str = "en_US-joe-medium"
    """Stock VITS voice the CPU engine adapts (a voice of the shared TTS engine)."""
    stt_kinds: list[str] = ["stt_cpu_ws", "stt_gpu_ws"]
    """Registry kinds that transcribe references without a prompt_text."""
    stt_urls: list[str] = []
    """Static STT replicas used when the registry lists none."""
    stt_timeout_s: float = Field(60.0, gt=0)
    """Time an STT replica may take to transcribe a reference."""
    max_upload_bytes: int = Field(20 * 1024 * 1024, ge=1024)
    """Largest reference upload."""
    max_upload_seconds: float = Field(120.0, gt=0)
    """Longest reference upload (only its best 10 s are kept)."""
    reference_rate: int = Field(32000, ge=8000, le=48000)
    """Sample rate references are stored at (GPT-SoVITS v2 works at 32 kHz)."""
    min_reference_s: float = Field(3.0, gt=0)
    """Shortest reference speech accepted."""
    max_reference_s: float = Field(10.0, gt=0)
    """Longest reference speech kept."""
    min_snr_db: float = Field(12.0, ge=0)
    """Estimated SNR below which a reference is refused."""
    require_consent: bool = True
    """Refuse uploads without ``consent=true``."""
    max_text_chars: int = Field(1000, ge=1)
    """Longest text one synthesis takes."""
    default_language: str = "en"
    """Language of references and texts when the caller names none."""

    @property
    def voices_path(self) -> Path:
        """The resolved voices folder."""
        return self.voices_dir or self.common.home / "voices"

    @property
    def cache_path(self) -> Path:
        """The resolved cache folder."""
        return self.cache_dir or self.common.home / "clone-cache"

    def reference_limits(self) -> ReferenceLimits:
        """The reference checks these settings ask for."""
        return ReferenceLimits(
            min_s=self.min_reference_s, max_s=self.max_reference_s, min_snr_db=self.min_snr_db
        )
