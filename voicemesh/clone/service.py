"""The cloning service (``tts_clone``): voice profiles, synthesis in a cloned voice, cache.

* ``POST /v1/voices`` (multipart: ``audio``, ``name``, ``prompt_text``, ``language``,
  ``consent``): checks and stores a reference (see :mod:`voicemesh.clone.reference`);
  without ``prompt_text`` the reference is transcribed by an STT replica from the
  registry. ``GET /v1/voices``, ``GET``/``DELETE /v1/voices/{id}``.
* ``POST /v1/synthesize`` (JSON: ``text``, ``voice_id``, ``language``, ``speed``,
  ``format``, ``stream``): audio in the voice. GPT-SoVITS when a backend is
  registered, the WORLD-adapted VITS voice when none is, or when it fails (the
  fallback is counted and named in ``X-VoiceMesh-Engine`` / ``X-VoiceMesh-Fallback``).
  Results are cached (:mod:`voicemesh.clone.cache`).

Who owns a voice: the key identity in the ``X-VoiceMesh-Key-Id`` header, which the
gateway sets from the caller's API key (a hash, never the key). Another identity
gets 404 for every route that names the voice. A caller without the header is
``anonymous`` (a direct call on a trusted network, the embedded default).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated

import httpx
import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Gauge
from pydantic import BaseModel, Field
from redis.asyncio import Redis

from voicemesh.audio import decode_audio_file, pcm16_to_float32, resample
from voicemesh.clone.cache import ResultCache, cache_key
from voicemesh.clone.engines import CloneRequest, SynthesisStream, VoiceCloner, WorldAdaptedVits
from voicemesh.clone.gptsovits import GptSovitsCloner, probe_gptsovits
from voicemesh.clone.profiles import ProfileStore, VoiceProfile, new_voice_id, wav_bytes
from voicemesh.clone.reference import ReferenceLimits, ReferenceRejected, prepare_reference
from voicemesh.errors import (
    BackendClosed,
    BackendTimeout,
    BadRequest,
    EngineUnavailable,
    ModelAssetError,
    PayloadTooLarge,
    RegistryUnavailable,
)
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import registry_status, start_heartbeat, stop_heartbeat
from voicemesh.metrics import ServiceMetrics
from voicemesh.registry import RegistryClient, RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.settings import CommonSettings, ServiceSettings
from voicemesh.tts.encoding import (
    AudioEncoder,
    AudioFormat,
    encode_audio,
    media_type,
    output_rate,
)

_LOGGER = logging.getLogger(__name__)

OWNER_HEADER = "X-VoiceMesh-Key-Id"
"""Header the gateway sets to the caller's key identity."""
ANONYMOUS = "anonymous"

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
        return self.voices_dir or CommonSettings().home / "voices"

    @property
    def cache_path(self) -> Path:
        """The resolved cache folder."""
        return self.cache_dir or CommonSettings().home / "clone-cache"

    def reference_limits(self) -> ReferenceLimits:
        """The reference checks these settings ask for."""
        return ReferenceLimits(min_s=self.min_reference_s, max_s=self.max_reference_s,
                               min_snr_db=self.min_snr_db)

class SynthesizeBody(BaseModel):
    """``POST /v1/synthesize``."""

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

def load_cpu_engine(settings: CloneSettings) -> WorldAdaptedVits:
    """The WORLD-adapted VITS engine on the shared TTS engine's stock voice."""
    from voicemesh.clone.vits import load_base_voice

    return WorldAdaptedVits(load_base_voice(settings.vits_voice), settings.vits_voice)

def engine_order(gpt: VoiceCloner | None, cpu: VoiceCloner | None, *,
                 fallback: bool) -> list[VoiceCloner]:
    """Engines a request tries, in order: GPT-SoVITS when a backend is known, then the CPU
    engine (as the fallback when ``fallback`` is on, alone when there is no backend)."""
    order: list[VoiceCloner] = [gpt] if gpt is not None else []
    if cpu is not None and (fallback or not order):
        order.append(cpu)
    return order


class CloneState:
    """What the app holds while it runs."""

    def __init__(self, settings: CloneSettings, redis: Redis, metrics: ServiceMetrics,
                 cpu: WorldAdaptedVits | None) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.store = ProfileStore(redis, settings.voices_path, settings.key_prefix)
        self.cache = ResultCache(redis, settings.cache_path, max_bytes=settings.cache_max_bytes,
                                 prefix=settings.key_prefix)
        # The registry is the mesh's own (default prefix): STT replicas and backends live there.
        self.registry = RegistryClient(str(settings.resolved_redis_url()),
                                       ttl_s=settings.registry_ttl_s)
        self.backend_urls: list[str] = []
        self.gpt = GptSovitsCloner(
            lambda: list(self.backend_urls),
            model_version=settings.gptsovits_model_version,
            backend_voices_dir=settings.gptsovits_voices_dir or str(settings.voices_path),
            timeout_s=settings.gptsovits_timeout_s,
            connect_timeout_s=settings.gptsovits_connect_timeout_s,
            queue_timeout_s=settings.gptsovits_queue_timeout_s,
        )
        self.cpu = cpu
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None
        self.active = 0
        self.fallbacks = 0
        self.hit_ratio = Gauge("voicemesh_clone_cache_hit_ratio",
                               "Cache hits over lookups on this replica", ["service"],
                               registry=metrics.registry)

    def engines(self) -> list[VoiceCloner]:
        """Engines to try, in order (see :func:`engine_order`)."""
        return engine_order(self.gpt if self.backend_urls else None, self.cpu,
                            fallback=self.settings.fallback)

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it (with the cache hit rate)."""
        s = self.settings
        names = [e.name for e in self.engines()]
        return ReplicaInfo(
            instance_id=s.instance_id, kind=s.kind, url=s.public_url, device="cpu",
            model=s.vits_voice if not self.backend_urls else s.gptsovits_model_version,
            engine="+".join(names) or "none",
            capabilities=["clone", "synthesize", "stream"],
            load=ReplicaLoad(active_sessions=self.active, queue=self.gpt.queue.depth(),
                             cache_hit_rate=self.cache.hit_rate),
            started_at=self.started_at, updated_at=time.time(),
        )

    async def refresh_backends(self, client: httpx.AsyncClient) -> None:
        """Register the configured GPT-SoVITS backends that answer, then read all registered."""
        s = self.settings
        for url in (u.rstrip("/") for u in s.gptsovits_urls):
            if not self.gpt.queue.busy(url) and not await probe_gptsovits(client, url):
                continue
            now = time.time()
            # Named by the URL, so every tts_clone replica refreshes the same entry.
            digest = hashlib.sha256(url.encode()).hexdigest()[:12]
            info = ReplicaInfo(instance_id=f"{s.gptsovits_kind}-{digest}",
                               kind=s.gptsovits_kind, url=url, engine="gpt-sovits",
                               model=s.gptsovits_model_version, capabilities=["clone"],
                               started_at=now, updated_at=now)
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.heartbeat(info)
        try:
            replicas = await self.registry.snapshot(s.gptsovits_kind)
        except RegistryUnavailable as exc:
            _LOGGER.warning("cannot read GPT-SoVITS backends from the registry: %s", exc.message)
            return
        self.backend_urls = [r.url for r in replicas if r.healthy and not r.draining]

    async def stt_urls(self) -> list[str]:
        """STT replicas that can transcribe a reference, registered ones first."""
        urls: list[str] = []
        for kind in self.settings.stt_kinds:
            try:
                replicas = await self.registry.snapshot(kind)
            except RegistryUnavailable:
                continue
            urls += [r.url for r in replicas if r.healthy and not r.draining]
        return urls + [u.rstrip("/") for u in self.settings.stt_urls]

async def transcribe_reference(state: CloneState, audio_16k: np.ndarray, language: str,
                               request_id: str) -> str:
    """What the reference says, from the first STT replica that answers."""
    urls = await state.stt_urls()
    if not urls:
        raise EngineUnavailable("prompt_text is missing and no STT service is registered to "
                                "transcribe the reference", code="no_stt_backend")
    data = wav_bytes(audio_16k, 16000)
    last = ""
    async with httpx.AsyncClient(timeout=state.settings.stt_timeout_s) as client:
        for url in urls:
            try:
                response = await client.post(
                    f"{url}/v1/transcribe", files={"file": ("reference.wav", data, "audio/wav")},
                    data={"language": language, "response_format": "json"},
                    headers={"X-Request-ID": request_id})
            except httpx.HTTPError as exc:
                last = f"{url}: {exc!r}"
                continue
            if response.status_code == 200:
                return str(response.json().get("text", "")).strip()
            last = f"{url} answered {response.status_code}"
            if response.status_code < 500:
                break
    raise EngineUnavailable(f"could not transcribe the reference: {last}",
                            code="transcription_failed")

def _owner(request: Request) -> str:
    return request.headers.get(OWNER_HEADER, "").strip() or ANONYMOUS

def create_clone_app(settings: CloneSettings, cpu_engine: WorldAdaptedVits | None = None
                     ) -> FastAPI:
    """Build the cloning app; the lifespan loads the CPU engine unless one is given."""
    metrics = ServiceMetrics(settings.kind)
    redis_url = settings.resolved_redis_url()
    if not redis_url:
        raise ValueError("tts_clone keeps voice profiles in Redis: set a redis_url")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        cpu = cpu_engine
        if cpu is None and settings.cpu_engine:
            try:
                cpu = await asyncio.to_thread(load_cpu_engine, settings)
            except (ImportError, ModelAssetError) as exc:
                # GPT-SoVITS backends may still serve; /health says what is missing.
                _LOGGER.error("the CPU cloning engine cannot load: %s", exc)
        if cpu is not None:
            await asyncio.to_thread(lambda: cpu.source)  # calibrate before the first request
        redis = Redis.from_url(redis_url, decode_responses=True, socket_timeout=3.0,
                               socket_connect_timeout=3.0)
        state = CloneState(settings, redis, metrics, cpu)
        app.state.clone = state
        async with httpx.AsyncClient() as probe_client:
            await state.refresh_backends(probe_client)
            refresher = asyncio.create_task(_refresh_loop(state, probe_client))
            state.heartbeat = await start_heartbeat(settings, state.replica_info)
            _LOGGER.info("%s ready: engines %s", settings.kind,
                         [e.name for e in state.engines()])
            try:
                yield
            finally:
                refresher.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await refresher
                await stop_heartbeat(state.heartbeat)
                await state.gpt.close()
                await state.registry.close()
                await redis.aclose()

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state: CloneState = request.app.state.clone
        engines = state.engines()
        return JSONResponse({
            "status": "ok" if engines else "degraded",
            "service": settings.kind,
            "instance_id": settings.instance_id,
            "engines": [e.name for e in engines],
            "gpt_sovits_backends": state.backend_urls,
            "cpu_engine": None if state.cpu is None else state.cpu.model_version,
            "cache": {"hits": state.cache.hits, "misses": state.cache.misses,
                      "hit_rate": state.cache.hit_rate},
            "fallbacks": state.fallbacks,
            "registry": registry_status(state.heartbeat),
        })

    @app.post("/v1/voices", status_code=201)
    async def create_voice(
        request: Request,
        *,
        audio: Annotated[UploadFile, File(description="reference: wav, flac, mp3, ogg, webm")],
        name: Annotated[str, Form(min_length=1, max_length=100)],
        prompt_text: Annotated[str | None, Form(max_length=1000)] = None,
        language: Annotated[str | None, Form(max_length=16)] = None,
        consent: Annotated[bool, Form()] = False,
    ) -> JSONResponse:
        state: CloneState = request.app.state.clone
        request_id: str = request.state.request_id
        if settings.require_consent and not consent:
            raise BadRequest("set consent=true to confirm the speaker agreed to be cloned",
                             code="consent_required")
        data = await audio.read(settings.max_upload_bytes + 1)
        if len(data) > settings.max_upload_bytes:
            raise PayloadTooLarge(f"the reference is larger than {settings.max_upload_bytes} "
                                  "bytes", code="file_too_large")
        samples = await asyncio.to_thread(decode_audio_file, data,
                                          target_rate=settings.reference_rate,
                                          max_seconds=settings.max_upload_seconds)
        prepared = await asyncio.to_thread(prepare_reference, samples, settings.reference_rate,
                                           settings.reference_limits())
        lang = (language or settings.default_language).strip().lower()
        text = (prompt_text or "").strip()
        source = "given"
        if not text:
            audio_16k = resample(prepared.audio, settings.reference_rate, 16000)
            text = await transcribe_reference(state, audio_16k, lang, request_id)
            source = "transcribed"
            if not text:
                raise ReferenceRejected("no words could be heard in the reference",
                                        code="reference_without_speech")
        wav = await asyncio.to_thread(wav_bytes, prepared.audio, settings.reference_rate)
        digest = await asyncio.to_thread(state.store.store_audio, wav)
        profile = VoiceProfile(
            voice_id=new_voice_id(), owner=_owner(request), name=name.strip(), language=lang,
            prompt_text=text, prompt_source=source, audio_sha256=digest,
            sample_rate=settings.reference_rate, duration_s=round(prepared.duration_s, 3),
            consent=consent, quality=prepared.report(),
        )
        await state.store.create(profile)
        metrics.count("create_voice", "ok")
        return JSONResponse(profile.public(), status_code=201)

    @app.get("/v1/voices")
    async def list_voices(request: Request) -> dict[str, object]:
        state: CloneState = request.app.state.clone
        profiles = await state.store.list(_owner(request))
        return {"voices": [p.public() for p in profiles]}

    @app.get("/v1/voices/{voice_id}")
    async def get_voice(request: Request, voice_id: str) -> dict[str, object]:
        state: CloneState = request.app.state.clone
        return (await state.store.get(voice_id, _owner(request))).public()

    @app.delete("/v1/voices/{voice_id}")
    async def delete_voice(request: Request, voice_id: str) -> dict[str, object]:
        state: CloneState = request.app.state.clone
        profile = await state.store.delete(voice_id, _owner(request))
        return {"deleted": profile.voice_id}

    @app.post("/v1/synthesize", response_model=None)
    async def synthesize(request: Request, body: SynthesizeBody) -> Response:
        state: CloneState = request.app.state.clone
        if len(body.text) > settings.max_text_chars:
            raise BadRequest(f"text is longer than {settings.max_text_chars} characters",
                             code="text_too_long")
        profile = await state.store.get(body.voice_id, _owner(request))
        return await Synthesis(state, profile, body, request.state.request_id).respond()

    return app

async def _refresh_loop(state: CloneState, client: httpx.AsyncClient) -> None:
    while True:
        await asyncio.sleep(state.settings.backend_refresh_s)
        try:
            await state.refresh_backends(client)
        except Exception:
            _LOGGER.exception("refreshing GPT-SoVITS backends failed")
        state.hit_ratio.labels(state.settings.kind).set(state.cache.hit_rate or 0.0)

class Synthesis:
    """One ``POST /v1/synthesize``: cache, engines in order with fallback, encoding."""

    def __init__(self, state: CloneState, profile: VoiceProfile, body: SynthesizeBody,
                 request_id: str) -> None:
        self.state = state
        self.profile = profile
        self.body = body
        self.request_id = request_id
        self.started = time.perf_counter()
        self.fallback_reason: str | None = None
        self.clone_request = CloneRequest(
            text=body.text.strip(), language=body.language or profile.language,
            speed=body.speed, reference_path=state.store.audio_path(profile.audio_sha256),
            reference_sha256=profile.audio_sha256, prompt_text=profile.prompt_text,
            prompt_language=profile.language, request_id=request_id,
        )

    def key(self, engine: VoiceCloner) -> str:
        """The cache key of this request on ``engine``."""
        r = self.clone_request
        return cache_key(voice_sha256=r.reference_sha256, text=r.text,
                         params={"language": r.language, "speed": r.speed,
                                 "format": self.body.format, "rate": self.body.sample_rate,
                                 "prompt": r.prompt_text},
                         engine=engine.name, model_version=engine.model_version)

    def headers(self, engine: str, approximate: bool, cache: str,
                sample_rate: int | None) -> dict[str, str]:
        """Headers naming the engine, whether it approximates the voice, and the cache."""
        headers = {"X-VoiceMesh-Engine": engine, "X-VoiceMesh-Cache": cache,
                   "X-VoiceMesh-Approximate": "true" if approximate else "false",
                   "X-VoiceMesh-Voice": self.profile.voice_id}
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
            raise EngineUnavailable("no cloning engine is available (no GPT-SoVITS backend "
                                    "registered and the CPU engine is off)", code="no_engine")
        for index, engine in enumerate(engines):
            key = self.key(engine)
            hit = await state.cache.get(key) if state.settings.cache_max_bytes else None
            if hit is not None:
                state.metrics.count("cache", "hit")
                state.metrics.observe("cache_hit", time.perf_counter() - self.started)
                return Response(hit.data, media_type=hit.media_type,
                                headers=self.headers(hit.engine, hit.approximate, "hit", None))
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
                _LOGGER.warning("request %s: %s failed (%s: %s); falling back to %s",
                                self.request_id, engine.name, exc.code, exc.message,
                                engines[index + 1].name)
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

    async def _serve(self, engine: VoiceCloner, stream: SynthesisStream, key: str,
                     pcm: bytes | None) -> Response:
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
        return StreamingResponse(self._relay(engine, stream, key, rate),
                                 media_type=media_type(fmt, rate), headers=headers)

    def _encode(self, pcm: bytes, from_rate: int, rate: int) -> bytes:
        """A whole result in the requested format and rate."""
        audio = pcm16_to_float32(pcm)
        return encode_audio(resample(audio, from_rate, rate), rate, self.body.format)

    async def _relay(self, engine: VoiceCloner, stream: SynthesisStream, key: str,
                     rate: int) -> AsyncIterator[bytes]:
        """Pass chunks through as they come; cache the whole result when it completes."""
        import soxr

        encoder = AudioEncoder(self.body.format, rate, streaming=True)
        resampler = (soxr.ResampleStream(stream.sample_rate, rate, 1, dtype="float32")
                     if rate != stream.sample_rate else None)
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
            tail = (resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                    if resampler is not None else np.zeros(0, dtype=np.float32))
            yield (encoder.feed(tail) if tail.size else b"") + encoder.close()
        finally:
            self.state.active -= 1
        data = await asyncio.to_thread(self._encode, b"".join(parts), stream.sample_rate, rate)
        await self._store(key, data, engine, rate)

    async def _store(self, key: str, data: bytes, engine: VoiceCloner, rate: int) -> None:
        state = self.state
        elapsed = time.perf_counter() - self.started
        state.metrics.observe(f"synthesize_{engine.name}", elapsed)
        _LOGGER.info("request %s: %s synthesised %d bytes in %.0f ms%s", self.request_id,
                     engine.name, len(data), elapsed * 1000,
                     f" (fallback: {self.fallback_reason})" if self.fallback_reason else "")
        if state.settings.cache_max_bytes:
            await state.cache.put(key, data, media_type=media_type(self.body.format, rate),
                                  engine=engine.name, approximate=engine.approximate)
