"""One ``POST /v1/synthesize`` of the cloning service: cache, engines in order, encoding."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import numpy as np
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field

from voicemesh.audio import pcm16_to_float32, resample
from voicemesh.clone.cache import cache_key
from voicemesh.clone.engines import CloneRequest, SynthesisStream, VoiceCloner
from voicemesh.clone.profiles import VoiceProfile
from voicemesh.clone.state import CloneState
from voicemesh.errors import BackendClosed, BackendTimeout, EngineUnavailable
from voicemesh.tts.encoding import AudioEncoder, AudioFormat, encode_audio, media_type, output_rate

_LOGGER = logging.getLogger(__name__)


class SynthesizeBody(BaseModel):
    """``POST /v1/synthesize`` (any other field: 422 ``unknown_field``)."""

    model_config = ConfigDict(extra="forbid")

    text: str = Field(min_length=1)
    """What to say."""
    voice_id: str
    """A voice profile of the caller."""
    language: str | None = None
    """Language of the text (default: the profile's)."""
    speed: float = Field(1.0, ge=0.5, le=2.0)
    """Speaking rate."""
    format: AudioFormat = "wav"
    """wav, pcm (16-bit little-endian mono), flac, mp3 or opus."""
    sample_rate: int | None = Field(None, ge=8000, le=48000)
    """Output rate (default: the engine's; mp3 and opus take the next rate they support)."""
    stream: bool = False
    """Send audio as the engine produces it."""


class Synthesis:
    """One ``POST /v1/synthesize``: cache, engines in order with fallback, encoding."""

    def __init__(
        self, state: CloneState, profile: VoiceProfile, body: SynthesizeBody, request_id: str
    ) -> None:
        self.state = state
        self.profile = profile
        self.body = body
        self.request_id = request_id
        self.started = time.perf_counter()
        self.fallback_reason: str | None = None
        self.clone_request = CloneRequest(
            text=body.text.strip(),
            language=body.language or profile.language,
            speed=body.speed,
            reference_path=state.store.audio_path(profile.audio_sha256),
            reference_sha256=profile.audio_sha256,
            prompt_text=profile.prompt_text,
            prompt_language=profile.language,
            request_id=request_id,
        )

    def key(self, engine: VoiceCloner) -> str:
        """The cache key of this request on ``engine``."""
        r = self.clone_request
        return cache_key(
            voice_sha256=r.reference_sha256,
            text=r.text,
            params={
                "language": r.language,
                "speed": r.speed,
                "format": self.body.format,
                "rate": self.body.sample_rate,
                "prompt": r.prompt_text,
            },
            engine=engine.name,
            model_version=engine.model_version,
        )

    def headers(
        self, engine: str, approximate: bool, cache: str, sample_rate: int | None
    ) -> dict[str, str]:
        """Headers naming the engine, whether it approximates the voice, and the cache."""
        headers = {
            "X-VoiceMesh-Engine": engine,
            "X-VoiceMesh-Cache": cache,
            "X-VoiceMesh-Approximate": "true" if approximate else "false",
            "X-VoiceMesh-Voice": self.profile.voice_id,
        }
        if sample_rate:
            headers["X-VoiceMesh-Sample-Rate"] = str(sample_rate)
        if self.fallback_reason:
            headers["X-VoiceMesh-Fallback"] = self.fallback_reason
        return headers

    async def respond(self) -> Response:
        """Serve from the cache or the first engine that can, falling back visibly."""
        state = self.state
        engines = state.engines()
        if not engines:
            raise EngineUnavailable(
                "no cloning engine is available (no GPT-SoVITS backend "
                "registered and the CPU engine is off)",
                code="no_engine",
            )
        for index, engine in enumerate(engines):
            key = self.key(engine)
            hit = await state.cache.get(key) if state.settings.cache_max_bytes else None
            if hit is not None:
                state.metrics.count("cache", "hit")
                state.metrics.observe("cache_hit", time.perf_counter() - self.started)
                return Response(
                    hit.data,
                    media_type=hit.media_type,
                    headers=self.headers(hit.engine, hit.approximate, "hit", hit.sample_rate),
                )
            state.metrics.count("cache", "miss")
            pcm: bytes | None = None
            try:
                stream = await engine.start(self.clone_request, self.body.stream)
                if not self.body.stream:
                    # Read whole results here, so a backend that fails mid-reply still
                    # falls back; a stream falls back only until its first audio.
                    pcm = await self._collect(stream)
            except (EngineUnavailable, BackendClosed, BackendTimeout) as exc:
                if index + 1 >= len(engines):
                    raise
                self.fallback_reason = exc.code
                state.fallbacks += 1
                state.metrics.count("fallback", exc.code)
                _LOGGER.warning(
                    "request %s: %s failed (%s: %s); falling back to %s",
                    self.request_id,
                    engine.name,
                    exc.code,
                    exc.message,
                    engines[index + 1].name,
                )
                continue
            return await self._serve(engine, stream, key, pcm)
        raise EngineUnavailable("no cloning engine could serve", code="no_engine")

    async def _collect(self, stream: SynthesisStream) -> bytes:
        """The whole PCM of a stream (counted as an active synthesis meanwhile)."""
        self.state.active += 1
        try:
            return b"".join([chunk async for chunk in stream.chunks()])
        finally:
            self.state.active -= 1

    async def _serve(
        self, engine: VoiceCloner, stream: SynthesisStream, key: str, pcm: bytes | None
    ) -> Response:
        fmt = self.body.format
        state = self.state
        rate = output_rate(fmt, self.body.sample_rate or stream.sample_rate)
        headers = self.headers(engine.name, engine.approximate, "miss", rate)
        state.metrics.count("synthesize", engine.name)
        if pcm is not None:
            data = await asyncio.to_thread(self._encode, pcm, stream.sample_rate, rate)
            await self._store(key, data, engine, rate)
            return Response(data, media_type=media_type(fmt, rate), headers=headers)
        headers["X-VoiceMesh-Stream"] = "true"
        return StreamingResponse(
            self._relay(engine, stream, key, rate),
            media_type=media_type(fmt, rate),
            headers=headers,
        )

    def _encode(self, pcm: bytes, from_rate: int, rate: int) -> bytes:
        """A whole result in the requested format and rate."""
        audio = pcm16_to_float32(pcm)
        return encode_audio(resample(audio, from_rate, rate), rate, self.body.format)

    async def _relay(
        self, engine: VoiceCloner, stream: SynthesisStream, key: str, rate: int
    ) -> AsyncIterator[bytes]:
        """Pass chunks through as they come; cache the whole result when it completes."""
        import soxr

        encoder = AudioEncoder(self.body.format, rate, streaming=True)
        resampler = (
            soxr.ResampleStream(stream.sample_rate, rate, 1, dtype="float32")
            if rate != stream.sample_rate
            else None
        )
        parts: list[bytes] = []
        self.state.active += 1
        try:
            async for chunk in stream.chunks():
                parts.append(chunk)
                audio = pcm16_to_float32(chunk)
                if resampler is not None:
                    audio = resampler.resample_chunk(audio)
                data = encoder.feed(audio) if audio.size else b""
                if data:
                    yield data
            tail = (
                resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                if resampler is not None
                else np.zeros(0, dtype=np.float32)
            )
            yield (encoder.feed(tail) if tail.size else b"") + encoder.close()
        finally:
            self.state.active -= 1
        data = await asyncio.to_thread(self._encode, b"".join(parts), stream.sample_rate, rate)
        await self._store(key, data, engine, rate)

    async def _store(self, key: str, data: bytes, engine: VoiceCloner, rate: int) -> None:
        state = self.state
        elapsed = time.perf_counter() - self.started
        state.metrics.observe(f"synthesize_{engine.name}", elapsed)
        _LOGGER.info(
            "request %s: %s synthesised %d bytes in %.0f ms%s",
            self.request_id,
            engine.name,
            len(data),
            elapsed * 1000,
            f" (fallback: {self.fallback_reason})" if self.fallback_reason else "",
        )
        if state.settings.cache_max_bytes:
            await state.cache.put(
                key,
                data,
                media_type=media_type(self.body.format, rate),
                engine=engine.name,
                approximate=engine.approximate,
                sample_rate=rate,
            )
