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
import logging
from collections.abc import AsyncIterator
from typing import Annotated

import httpx
from fastapi import APIRouter, Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, Response
from redis.asyncio import Redis

from voicemesh.audio import resample
from voicemesh.audio_files import decode_audio_file
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.profiles import VoiceProfile, new_voice_id, wav_bytes
from voicemesh.clone.reference import ReferenceRejected, prepare_reference
from voicemesh.clone.settings import CloneSettings
from voicemesh.clone.state import (
    CloneState,
    load_cpu_engine,
    refresh_backends_forever,
    transcribe_reference,
)
from voicemesh.clone.synthesis import Synthesis, SynthesizeBody
from voicemesh.engine_guard import guard_engine
from voicemesh.errors import BadRequest, ModelAssetError, PayloadTooLarge
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import ANONYMOUS, OWNER_HEADER, SAMPLE_RATE
from voicemesh.tasks import stop_task

_LOGGER = logging.getLogger(__name__)


def get_clone_state(connection: HTTPConnection) -> CloneState:
    """The running replica's state (set by the lifespan)."""
    state: CloneState = connection.app.state.clone
    return state


def get_owner(request: Request) -> str:
    """The caller's key identity (the gateway's header), ``anonymous`` without one."""
    return request.headers.get(OWNER_HEADER, "").strip() or ANONYMOUS


Clone = Annotated[CloneState, Depends(get_clone_state)]
Owner = Annotated[str, Depends(get_owner)]
router = APIRouter()


def create_clone_app(
    settings: CloneSettings, cpu_engine: WorldAdaptedVits | None = None
) -> FastAPI:
    """Build the cloning app; the lifespan loads the CPU engine unless one is given."""
    apply_log_level(settings, settings.kind)
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
        redis = Redis.from_url(
            redis_url, decode_responses=True, socket_timeout=3.0, socket_connect_timeout=3.0
        )
        state = CloneState(settings, redis, metrics, cpu)
        app.state.clone = state
        async with httpx.AsyncClient() as probe_client:
            await state.refresh_backends(probe_client)
            refresher = asyncio.create_task(refresh_backends_forever(state, probe_client))
            try:
                async with serve_replica(settings, state.replica_info) as heartbeat:
                    state.heartbeat = heartbeat
                    _LOGGER.info(
                        "%s ready: engines %s", settings.kind, [e.name for e in state.engines()]
                    )
                    try:
                        yield
                    finally:
                        await stop_task(refresher)
            finally:
                await state.gpt.close()
                await state.registry.close()
                await redis.aclose()

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)
    guard_engine(app, settings.internal_token, metrics)
    app.include_router(router)
    return app


@router.get("/health")
async def health(state: Clone) -> JSONResponse:
    """Which engines serve, the known backends, the cache and the fallbacks so far."""
    settings = state.settings
    engines = state.engines()
    return JSONResponse(
        {
            "status": "ok" if engines else "degraded",
            "service": settings.kind,
            "instance_id": settings.instance_id,
            "engines": [e.name for e in engines],
            "gpt_sovits_backends": state.backend_urls,
            "cpu_engine": None if state.cpu is None else state.cpu.model_version,
            "cache": {
                "hits": state.cache.hits,
                "misses": state.cache.misses,
                "hit_rate": state.cache.hit_rate,
            },
            "fallbacks": state.fallbacks,
            "registry": registry_status(state.heartbeat),
        }
    )


@router.post("/v1/voices", status_code=201)
async def create_voice(
    request: Request,
    state: Clone,
    owner: Owner,
    *,
    audio: Annotated[UploadFile, File(description="reference: wav, flac, mp3, ogg, webm")],
    name: Annotated[str, Form(min_length=1, max_length=100)],
    prompt_text: Annotated[str | None, Form(max_length=1000)] = None,
    language: Annotated[str | None, Form(max_length=16)] = None,
    consent: Annotated[bool, Form()] = False,
) -> JSONResponse:
    """Check and store a reference recording as a new voice of the caller."""
    settings = state.settings
    request_id: str = request.state.request_id
    if settings.require_consent and not consent:
        raise BadRequest(
            "set consent=true to confirm the speaker agreed to be cloned", code="consent_required"
        )
    data = await audio.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"the reference is larger than {settings.max_upload_bytes} bytes", code="file_too_large"
        )
    samples = await asyncio.to_thread(
        decode_audio_file,
        data,
        target_rate=settings.reference_rate,
        max_seconds=settings.max_upload_seconds,
    )
    prepared = await asyncio.to_thread(
        prepare_reference, samples, settings.reference_rate, settings.reference_limits()
    )
    lang = (language or settings.default_language).strip().lower()
    text = (prompt_text or "").strip()
    source = "given"
    if not text:
        audio_16k = resample(prepared.audio, settings.reference_rate, SAMPLE_RATE)
        text = await transcribe_reference(state, audio_16k, lang, request_id)
        source = "transcribed"
        if not text:
            raise ReferenceRejected(
                "no words could be heard in the reference", code="reference_without_speech"
            )
    wav = await asyncio.to_thread(wav_bytes, prepared.audio, settings.reference_rate)
    digest = await asyncio.to_thread(state.store.store_audio, wav)
    profile = VoiceProfile(
        voice_id=new_voice_id(),
        owner=owner,
        name=name.strip(),
        language=lang,
        prompt_text=text,
        prompt_source=source,
        audio_sha256=digest,
        sample_rate=settings.reference_rate,
        duration_s=round(prepared.duration_s, 3),
        consent=consent,
        quality=prepared.report(),
    )
    await state.store.create(profile)
    state.measure_speaker(digest)
    state.metrics.count("create_voice", "ok")
    return JSONResponse(profile.public(), status_code=201)


@router.get("/v1/voices")
async def list_voices(state: Clone, owner: Owner) -> dict[str, object]:
    """The caller's voices."""
    profiles = await state.store.list(owner)
    return {"voices": [p.public() for p in profiles]}


@router.get("/v1/voices/{voice_id}")
async def get_voice(state: Clone, owner: Owner, voice_id: str) -> dict[str, object]:
    """One of the caller's voices (404 for another's)."""
    return (await state.store.get(voice_id, owner)).public()


@router.delete("/v1/voices/{voice_id}")
async def delete_voice(state: Clone, owner: Owner, voice_id: str) -> dict[str, object]:
    """Delete one of the caller's voices."""
    profile = await state.store.delete(voice_id, owner)
    return {"deleted": profile.voice_id}


@router.post("/v1/synthesize", response_model=None)
async def synthesize(
    request: Request, state: Clone, owner: Owner, body: SynthesizeBody
) -> Response:
    """Speak the text in one of the caller's voices (falling back visibly)."""
    if len(body.text) > state.settings.max_text_chars:
        raise PayloadTooLarge(
            f"text is longer than {state.settings.max_text_chars} characters", code="text_too_long"
        )
    profile = await state.store.get(body.voice_id, owner)
    return await Synthesis(state, profile, body, request.state.request_id).respond()
