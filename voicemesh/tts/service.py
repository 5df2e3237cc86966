"""The VITS text-to-speech service that ``tts_vits`` runs: catalogue, synthesis, A/B.

Routes: ``GET /v1/voices`` (filters, pagination), ``GET /v1/voices/{id}`` (with a
sample) and its ``sample.wav`` (in :mod:`voicemesh.tts.catalogue_routes`),
``POST /v1/synthesize`` (whole or streamed sentence by sentence), ``POST /v1/compare``,
``GET /health``, ``GET /metrics``. The lifespan prepares the
bundled voice, loads the default voice's model and registers the replica in Redis
(kind ``tts_vits``) with its load.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import numpy as np
from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from voicemesh.engine_guard import guard_engine
from voicemesh.errors import BadRequest, EmptyText, PayloadTooLarge
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.tts.catalogue import Voice
from voicemesh.tts.catalogue_routes import Tts, audio_headers, chosen_voice
from voicemesh.tts.catalogue_routes import router as voices_router
from voicemesh.tts.compare import (
    CandidateMeasure,
    recommend,
    recommendation_reason,
    recommendation_rule,
)
from voicemesh.tts.encoding import (
    AudioEncoder,
    encode_audio,
    media_type,
    output_rate,
    prepare_output,
)
from voicemesh.tts.engine import SynthesisChunk, Synthesizer
from voicemesh.tts.protocol import CompareRequest, SynthesizeRequest
from voicemesh.tts.settings import TtsSettings
from voicemesh.tts.state import ENGINE_NAME, TtsMetrics, TtsState, load_state

_LOGGER = logging.getLogger(__name__)

router = APIRouter()


def create_tts_app(
    settings: TtsSettings, engines: Mapping[str, Synthesizer] | None = None
) -> FastAPI:
    """Build the TTS app; ``engines`` (by catalogue model id) are used instead of loading."""
    apply_log_level(settings, settings.kind)
    metrics = TtsMetrics(settings.kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(load_state, settings, metrics, engines)
        app.state.tts = state
        async with serve_replica(
            settings,
            state.replica_info,
            is_idle=lambda: state.admission.active == 0,
            mark_draining=state.mark_draining,
            max_drain_s=settings.max_drain_s,
        ) as heartbeat:
            state.heartbeat = heartbeat
            _LOGGER.info(
                "%s ready: default voice %s, %d voices (%d models installed)",
                settings.kind,
                settings.default_voice,
                len(state.catalogue.voices),
                len(state.catalogue.installed_models),
            )
            yield

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)
    guard_engine(app, settings.internal_token, metrics)
    app.include_router(router)
    app.include_router(voices_router)
    return app


def check_text(text: str, limit: int) -> str:
    """The text when it is speakable: 413 past ``limit`` characters, 422 when empty."""
    if len(text) > limit:
        raise PayloadTooLarge(
            f"text is {len(text)} characters, over the limit of {limit}; split it into "
            "several requests",
            code="text_too_long",
        )
    if not text.strip():
        raise EmptyText("text is empty: give at least one word to speak", code="empty_text")
    return text


@router.get("/health")
async def health(state: Tts) -> JSONResponse:
    """Whether the replica serves, what it has loaded and its load."""
    settings = state.settings
    body = {
        "status": "draining" if state.draining else "ok",
        "service": settings.kind,
        "instance_id": settings.instance_id,
        "model_loaded": True,
        "engine": ENGINE_NAME,
        "default_voice": settings.default_voice,
        "models_loaded": sorted(state.engines.engines),
        "models_installed": sorted(state.catalogue.installed_models),
        "active": state.admission.active,
        "queue": state.admission.waiting,
        "rtf": state.recent_rtf,
        "registry": registry_status(state.heartbeat),
    }
    return JSONResponse(body, status_code=503 if state.draining else 200)


@router.post("/v1/synthesize", response_model=None)
async def synthesize(request: Request, state: Tts, body: SynthesizeRequest) -> Response:
    """Speak the text: the whole audio, or streamed sentence by sentence."""
    state.check_serving()
    settings = state.settings
    text = check_text(body.text, settings.max_chars)
    voice = chosen_voice(state, body)
    rate = output_rate(body.format, body.sample_rate or voice.model.sample_rate)
    headers = audio_headers(voice, body.format, rate)
    if body.stream:
        return await stream_synthesis(
            request, state, voice, text, body=body, rate=rate, headers=headers
        )
    started = time.monotonic()
    async with state.admission.slot():
        engine = await asyncio.to_thread(state.engines.get, voice.model)
        result = await asyncio.to_thread(
            engine.synthesize, text, speaker_id=voice.entry.speaker_id, speed=body.speed
        )
    audio = prepare_output(result.audio, result.sample_rate, rate, body.volume_db)
    data = await asyncio.to_thread(encode_audio, audio, rate, body.format)
    elapsed = time.monotonic() - started
    observe(
        state,
        voice,
        "whole",
        chars=len(text),
        elapsed=elapsed,
        first_s=result.first_chunk_s,
        audio_s=result.duration_s,
    )
    headers.update(
        {
            "X-VoiceMesh-Duration": f"{len(audio) / rate:.3f}",
            "X-VoiceMesh-Synthesis-Time": f"{result.synthesis_s:.3f}",
            "X-VoiceMesh-RTF": f"{result.rtf:.4f}",
        }
    )
    return Response(data, media_type=media_type(body.format, rate), headers=headers)


async def stream_synthesis(
    request: Request,
    state: TtsState,
    voice: Voice,
    text: str,
    *,
    body: SynthesizeRequest,
    rate: int,
    headers: dict[str, str],
) -> Response:
    """Stream the audio as the engine speaks each piece (one slot held until the end)."""
    started = time.monotonic()
    await state.admission.acquire()
    try:
        engine = await asyncio.to_thread(state.engines.get, voice.model)
        pieces: Iterator[SynthesisChunk] = engine.synthesize_chunks(
            text, speaker_id=voice.entry.speaker_id, speed=body.speed
        )
        # The first piece is made before the response starts, so a bad request still
        # gets a proper error status instead of a broken stream.
        first = await asyncio.to_thread(next, pieces, None)
    except BaseException:
        state.admission.release()
        raise
    first_s = time.monotonic() - started
    rid = getattr(request.state, "request_id", "-")

    async def chunks() -> AsyncIterator[bytes]:
        import soxr

        encoder = AudioEncoder(body.format, rate, streaming=True)
        resampler = (
            soxr.ResampleStream(engine.sample_rate, rate, 1, dtype="float32")
            if rate != engine.sample_rate
            else None
        )
        audio_s = 0.0
        try:
            piece = first
            while piece is not None:
                audio = piece.audio
                if resampler is not None:
                    audio = resampler.resample_chunk(audio)
                audio = prepare_output(audio, rate, rate, body.volume_db)
                audio_s += piece.duration_s
                data = encoder.feed(audio)
                if data:
                    yield data
                piece = await asyncio.to_thread(next, pieces, None)
            tail = b""
            if resampler is not None:
                last = resampler.resample_chunk(np.zeros(0, dtype=np.float32), last=True)
                tail = encoder.feed(prepare_output(last, rate, rate, body.volume_db))
            tail += encoder.close()
            if tail:
                yield tail
            observe(
                state,
                voice,
                "stream",
                chars=len(text),
                elapsed=time.monotonic() - started,
                first_s=first_s,
                audio_s=audio_s,
            )
        except Exception:
            _LOGGER.exception("request %s: stream failed after it started", rid)
            state.metrics.error("stream_failed")
        finally:
            state.admission.release()

    return StreamingResponse(
        chunks(),
        media_type=media_type(body.format, rate),
        headers={**headers, "X-VoiceMesh-Stream": "sentences"},
    )


@router.post("/v1/compare")
async def compare(state: Tts, body: CompareRequest) -> JSONResponse:
    """Several voices on one text, measured, with a recommendation."""
    state.check_serving()
    settings = state.settings
    text = check_text(body.text, settings.max_chars)
    if len(body.candidates) > settings.max_compare_candidates:
        raise BadRequest(
            f"{len(body.candidates)} candidates; at most {settings.max_compare_candidates}",
            code="too_many_candidates",
        )
    voices = [chosen_voice(state, c) for c in body.candidates]
    out: list[dict[str, Any]] = []
    measures: list[CandidateMeasure] = []
    async with state.admission.slot():
        for index, (candidate, voice) in enumerate(zip(body.candidates, voices, strict=True)):
            started = time.monotonic()
            engine = await asyncio.to_thread(state.engines.get, voice.model)
            result = await asyncio.to_thread(
                engine.synthesize, text, speaker_id=voice.entry.speaker_id, speed=candidate.speed
            )
            rate = output_rate(body.format, body.sample_rate or result.sample_rate)
            audio = prepare_output(result.audio, result.sample_rate, rate, 0.0)
            data = await asyncio.to_thread(encode_audio, audio, rate, body.format)
            latency_ms = round((time.monotonic() - started) * 1000, 1)
            rtf = round(result.rtf, 4)
            state.note_rtf(result.rtf, voice.id)
            # The rule sees the numbers the answer shows, so its reason quotes them exactly.
            duration_s = round(result.duration_s, 3)
            measures.append(CandidateMeasure(duration_s, candidate.speed, rtf, latency_ms))
            out.append(
                {
                    "index": index,
                    "voice": voice.id,
                    "voice_id": candidate.voice_ref()
                    if candidate.voice_ref() is not None
                    else voice.id,
                    "voice_name": voice.entry.name,
                    "speaker_id": voice.entry.speaker_id,
                    "model": voice.model.id,
                    "engine": f"{ENGINE_NAME}/{voice.model.family}",
                    "speed": candidate.speed,
                    "format": body.format,
                    "sample_rate": rate,
                    "duration_s": duration_s,
                    "synthesis_s": round(result.synthesis_s, 4),
                    "rtf": rtf,
                    "latency_ms": latency_ms,
                    "chars_per_s": round(len(text) / max(result.synthesis_s, 1e-6), 1),
                    "audio_base64": base64.b64encode(data).decode("ascii"),
                }
            )
    metric = body.metrics[0]
    best = recommend(measures, metric)
    labels = [str(c["voice"]) for c in out]
    state.metrics.count("compare", "ok")
    return JSONResponse(
        {
            "text": text,
            "candidates": out,
            "recommendation": {
                "for": metric,
                "index": best,
                "voice": out[best]["voice"] if best is not None else None,
                "recommended": out[best]["voice_id"] if best is not None else None,
                "rule": recommendation_rule(metric),
                "reason": recommendation_reason(measures, labels, metric),
            },
        }
    )


def observe(
    state: TtsState,
    voice: Voice,
    mode: str,
    *,
    chars: int,
    elapsed: float,
    first_s: float,
    audio_s: float,
) -> None:
    """Record one finished synthesis in the metrics and the replica's moving RTF."""
    metrics = state.metrics
    metrics.synthesis_time.labels(voice.id).observe(elapsed)
    metrics.first_chunk.labels(mode).observe(first_s)
    metrics.chars_per_second.observe(chars / max(elapsed, 1e-6))
    metrics.observe(f"synthesize_{mode}", elapsed)
    metrics.count("synthesize", "ok")
    if audio_s > 0:
        state.note_rtf(elapsed / audio_s, voice.id)
