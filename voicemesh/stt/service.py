"""The streaming Whisper service that ``stt_cpu_ws`` and ``stt_gpu_ws`` both run.

``WS /ws/transcribe`` streams partials and finals; ``POST /v1/transcribe`` decodes a
whole file; ``GET /health`` says whether the model is loaded and on which device;
``POST /v1/model/unload`` and ``/v1/model/load`` (:mod:`voicemesh.stt.model_admin`)
free and reload it. Each replica registers itself in Redis with its load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import (
    APIRouter,
    Body,
    Depends,
    FastAPI,
    File,
    Form,
    UploadFile,
    WebSocket,
)
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import BaseModel, ConfigDict

from voicemesh.audio_files import decode_audio_file
from voicemesh.engine_guard import guard_engine
from voicemesh.errors import BadRequest, PayloadTooLarge
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    SAMPLE_RATE,
)
from voicemesh.stt import model_admin
from voicemesh.stt.engines import load_transcriber
from voicemesh.stt.formats import render_transcript
from voicemesh.stt.handler import StreamHandler
from voicemesh.stt.scheduler import Priority
from voicemesh.stt.settings import SttSettings
from voicemesh.stt.state import SttState
from voicemesh.stt.types import Transcriber, check_language

_LOGGER = logging.getLogger(__name__)

ResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "lrc"]


def load_engine(settings: SttSettings) -> Transcriber:
    """Load the transcriber the settings name (a plain function: easy to test)."""
    return load_transcriber(
        settings.model,
        engine=settings.engine,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=settings.decode_threads(),
        workers=settings.workers,
        beam_size=settings.beam_size,
    )


def get_stt_state(connection: HTTPConnection) -> SttState:
    """The running replica's state (set by the lifespan)."""
    state: SttState = connection.app.state.stt
    return state


Stt = Annotated[SttState, Depends(get_stt_state)]
router = APIRouter()


def create_stt_app(settings: SttSettings, transcriber: Transcriber | None = None) -> FastAPI:
    """Build the streaming Whisper app; the lifespan loads the model unless one is given."""
    apply_log_level(settings, settings.kind)
    metrics = ServiceMetrics(settings.kind)

    async def start_state() -> SttState:
        """Load (unless handed in) and warm up the engine; only the state keeps it, so an
        unload (:mod:`voicemesh.stt.model_admin`) can free it."""
        started = time.perf_counter()
        engine: Transcriber = (
            transcriber
            if transcriber is not None
            else await asyncio.to_thread(load_engine, settings)
        )
        handed_in = transcriber is not None
        load_ms = None if handed_in else round((time.perf_counter() - started) * 1000, 1)
        state = SttState(settings, engine, metrics, load_ms)
        state.loader = lambda: load_engine(settings)
        await asyncio.to_thread(model_admin.warm_up, engine)
        return state

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await start_state()
        app.state.stt = state
        try:
            async with serve_replica(
                settings,
                state.replica_info,
                is_idle=lambda: not state.sessions,
                mark_draining=state.mark_draining,
                max_drain_s=settings.max_drain_s,
            ) as heartbeat:
                state.heartbeat = heartbeat
                _LOGGER.info(
                    "%s ready: %s %s on %s",
                    settings.kind,
                    state.engine_name,
                    settings.model,
                    state.device,
                )
                yield
        finally:
            state.scheduler.close()

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)
    guard_engine(app, settings.internal_token, metrics)
    app.include_router(router)
    return app


@router.get("/health")
async def health(state: Stt) -> JSONResponse:
    """Whether the model is loaded, on which device, and the replica's load."""
    settings = state.settings
    body = {
        "status": "draining" if state.draining else "ok",
        "service": settings.kind,
        "instance_id": settings.instance_id,
        "model_loaded": state.model_status == "loaded",
        "model": settings.model,
        "model_status": state.model_status,
        "model_error": state.model_error,
        "engine": state.engine_name,
        "device": state.device,
        "sessions": len(state.sessions),
        "queue": state.scheduler.queue_depth,
        "rtf": state.scheduler.recent_rtf,
        "latency_ms": state.scheduler.recent_latency_ms,
        "load": state.scheduler.meter.summary(),
        "batch_max": state.scheduler.batch_max,
        "batch_mean": state.scheduler.recent_batch,
        "model_load_time_ms": state.model_load_ms,
        "registry": registry_status(state.heartbeat),
    }
    return JSONResponse(body, status_code=503 if state.draining else 200)


@router.post("/v1/transcribe", response_model=None)
async def transcribe_file(
    state: Stt,
    *,
    file: Annotated[UploadFile, File(description="audio: wav, flac, mp3, ogg, webm, ...")],
    response_format: Annotated[ResponseFormat, Form()] = "json",
    language: Annotated[str | None, Form()] = None,
    word_timestamps: Annotated[bool, Form()] = False,
    prompt: Annotated[str | None, Form()] = None,
) -> JSONResponse | PlainTextResponse:
    """Transcribe a whole audio file (json, verbose_json, text, srt, vtt or lrc)."""
    settings = state.settings
    data = await file.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(
            f"file is larger than the limit of {settings.max_upload_bytes} bytes",
            code="file_too_large",
        )
    audio = await asyncio.to_thread(
        decode_audio_file, data, max_seconds=settings.max_upload_seconds
    )
    if audio.size == 0:
        raise BadRequest("the file holds no audio samples", code="empty_audio")
    language = check_language(state.transcriber, language or settings.language)
    started = time.perf_counter()
    result = await state.scheduler.decode(
        audio,
        Priority.BATCH,
        language=language,
        word_timestamps=word_timestamps,
        segment_timestamps=True,
        prompt=prompt or None,
    )
    elapsed = time.perf_counter() - started
    state.metrics.observe("transcribe_file", elapsed)
    state.metrics.count("transcribe_file", "ok")
    body, media_type = render_transcript(result, response_format)
    seconds = audio.size / SAMPLE_RATE
    headers = {
        "X-VoiceMesh-Engine": f"{state.engine_name}/{state.device}",
        "X-VoiceMesh-Duration": f"{seconds:.3f}",
        # This request's decode (queue wait included) per second of its audio.
        "X-VoiceMesh-RTF": f"{elapsed / max(seconds, 1e-3):.4f}",
    }
    if isinstance(body, dict):
        return JSONResponse(body, headers=headers)
    return PlainTextResponse(body, media_type=media_type, headers=headers)


@router.websocket("/ws/transcribe")
async def transcribe_stream(ws: WebSocket, state: Stt) -> None:
    """Stream partials and finals for one client's audio."""
    await ws.accept()
    await StreamHandler(ws, state).run()


class UnloadRequest(BaseModel):
    """Body of ``POST /v1/model/unload`` (optional; unknown fields are refused)."""

    model_config = ConfigDict(extra="forbid")

    force: bool = False
    """End open sessions (``model_unloaded``) instead of refusing the unload."""


class LoadRequest(BaseModel):
    """Body of ``POST /v1/model/load`` (optional; it has no field, unknown ones are refused)."""

    model_config = ConfigDict(extra="forbid")


@router.post("/v1/model/unload")
async def unload_model(
    state: Stt, body: Annotated[UnloadRequest | None, Body()] = None
) -> dict[str, Any]:
    """Free the model; 409 ``model_in_use`` with open sessions unless ``force`` ends them."""
    return await model_admin.unload_model(state, force=body.force if body else False)


@router.post("/v1/model/load")
async def load_model(
    state: Stt, body: Annotated[LoadRequest | None, Body()] = None
) -> JSONResponse:
    """Load the model again in the background: 202 ``loading``, then the registry says."""
    answer, status = await model_admin.load_model(state)
    return JSONResponse(answer, status_code=status)
