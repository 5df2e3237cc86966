"""Voice profiles: metadata in Redis, reference audio content-addressed on a volume.

A profile is JSON under ``{prefix}:clone:voice:{id}``; the ids an owner holds are a
set under ``{prefix}:clone:owner:{owner}``. The audio is a WAV file named by the
SHA-256 of its bytes (``{voices_dir}/{hash}.wav``), so two profiles made from the
same recording share one file, and a backend that caches by path never serves a
stale file: a new recording always has a new name. Which profiles use a file is a
set under ``{prefix}:clone:audio:{hash}``; the file goes when the last one does.

A profile belongs to the key that made it: :meth:`ProfileStore.get` with another
owner answers :class:`VoiceNotFound` (404), never "forbidden", so ids of other
keys' voices leak nothing.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
import uuid
from collections.abc import Awaitable
from pathlib import Path
from typing import TypeVar

import numpy as np
from pydantic import BaseModel, Field
from redis.asyncio import Redis
from redis.exceptions import RedisError

from voicemesh.clone.world import stats_path
from voicemesh.errors import RegistryUnavailable, VoiceNotFound
from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")


class VoiceProfile(BaseModel):
    """One cloned voice as stored and listed."""

    voice_id: str
    """Public id, ``v_`` and 16 hex digits."""
    owner: str
    """Key identity (a hash the gateway passes) that made the voice."""
    name: str
    """The caller's label for the voice."""
    language: str
    """Language of the reference (and the default of synthesis)."""
    prompt_text: str
    """What the reference says (given, or transcribed by the STT service)."""
    prompt_source: str = "given"
    """``given`` or ``transcribed``."""
    audio_sha256: str
    """Hash of the stored reference WAV, also its file name."""
    sample_rate: int
    """Sample rate of the stored reference."""
    duration_s: float
    """Length of the stored reference."""
    consent: bool
    """The caller confirmed the speaker agreed to be cloned."""
    quality: dict[str, object] = Field(default_factory=dict)
    """Level, clipping, SNR and trimming measured on upload."""
    created_at: float = Field(default_factory=time.time)
    """Unix time of the upload."""

    def public(self) -> dict[str, object]:
        """The profile as the API returns it (the owner hash stays inside)."""
        return self.model_dump(exclude={"owner"})


def wav_bytes(audio: np.ndarray, rate: int) -> bytes:
    """16-bit PCM WAV bytes of float samples."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(buffer, np.clip(audio, -1.0, 1.0), rate, subtype="PCM_16", format="WAV")
    return buffer.getvalue()


class ProfileStore:
    """Profiles in Redis and their audio in ``voices_dir``."""

    def __init__(
        self, redis: Redis, voices_dir: Path, prefix: str = "voicemesh", timeout_s: float = 3.0
    ) -> None:
        self.redis = redis
        self.voices_dir = voices_dir
        self.prefix = prefix
        self.timeout_s = timeout_s
        voices_dir.mkdir(parents=True, exist_ok=True)

    def _voice_key(self, voice_id: str) -> str:
        return f"{self.prefix}:clone:voice:{voice_id}"

    def _owner_key(self, owner: str) -> str:
        return f"{self.prefix}:clone:owner:{owner}"

    def _audio_key(self, digest: str) -> str:
        return f"{self.prefix}:clone:audio:{digest}"

    def audio_path(self, digest: str) -> Path:
        """Where the reference with this hash lives."""
        return self.voices_dir / f"{digest}.wav"

    async def _call(self, what: str, operation: Awaitable[_T]) -> _T:
        try:
            return await within(self.timeout_s, operation)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RegistryUnavailable(
                f"the profile store (Redis) is unavailable during {what}: "
                f"{str(exc) or type(exc).__name__}",
                code="profiles_unavailable",
            ) from exc

    def store_audio(self, data: bytes) -> str:
        """Write a reference WAV under its hash (atomically) and return the hash."""
        digest = hashlib.sha256(data).hexdigest()
        path = self.audio_path(digest)
        if not path.is_file():
            tmp = path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, path)
        return digest

    async def create(self, profile: VoiceProfile) -> VoiceProfile:
        """Save a new profile whose audio is already stored."""
        pipe = self.redis.pipeline(transaction=True)
        pipe.set(self._voice_key(profile.voice_id), profile.model_dump_json())
        pipe.sadd(self._owner_key(profile.owner), profile.voice_id)
        pipe.sadd(self._audio_key(profile.audio_sha256), profile.voice_id)
        await self._call("saving a voice", pipe.execute())
        _LOGGER.info("voice %s created (audio %s)", profile.voice_id, profile.audio_sha256[:12])
        return profile

    async def get(self, voice_id: str, owner: str) -> VoiceProfile:
        """The caller's profile, or VoiceNotFound (also for another key's voice)."""
        raw = await self._call("reading a voice", self.redis.get(self._voice_key(voice_id)))
        if raw is None:
            raise VoiceNotFound(f"no voice {voice_id!r}")
        profile = VoiceProfile.model_validate_json(raw)
        if profile.owner != owner:
            raise VoiceNotFound(f"no voice {voice_id!r}")
        return profile

    async def list(self, owner: str) -> list[VoiceProfile]:
        """The caller's profiles, newest first."""
        ids = await self._call("listing voices", self.redis.smembers(self._owner_key(owner)))
        if not ids:
            return []
        keys = [self._voice_key(str(i)) for i in sorted(ids)]
        values = await self._call("listing voices", self.redis.mget(keys))
        profiles = [VoiceProfile.model_validate_json(v) for v in values if v is not None]
        profiles = [p for p in profiles if p.owner == owner]
        return sorted(profiles, key=lambda p: p.created_at, reverse=True)

    async def delete(self, voice_id: str, owner: str) -> VoiceProfile:
        """Remove the caller's profile; its audio file goes when no profile uses it."""
        profile = await self.get(voice_id, owner)
        pipe = self.redis.pipeline(transaction=True)
        pipe.delete(self._voice_key(voice_id))
        pipe.srem(self._owner_key(owner), voice_id)
        pipe.srem(self._audio_key(profile.audio_sha256), voice_id)
        pipe.scard(self._audio_key(profile.audio_sha256))
        results = await self._call("deleting a voice", pipe.execute())
        if int(results[-1]) == 0:
            reference = self.audio_path(profile.audio_sha256)
            reference.unlink(missing_ok=True)
            stats_path(reference).unlink(missing_ok=True)
        _LOGGER.info("voice %s deleted", voice_id)
        return profile


def new_voice_id() -> str:
    """A fresh public voice id."""
    return f"v_{uuid.uuid4().hex[:16]}"
