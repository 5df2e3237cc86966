"""The VITS text-to-speech service that ``tts_vits`` runs: catalogue, synthesis, A/B.

Routes: ``GET /v1/voices`` (filters, pagination), ``GET /v1/voices/{id}`` (with a
sample), ``POST /v1/synthesize`` (whole or streamed sentence by sentence),
``POST /v1/compare``, ``GET /health``, ``GET /metrics``. The lifespan prepares the
bundled voice, loads the default voice's model and registers the replica in Redis
(kind ``tts_vits``) with its load.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, Response, StreamingResponse

from voicemesh.errors import BadRequest, EmptyText, PayloadTooLarge
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.tts.catalogue import Gender, Voice
from voicemesh.tts.compare import (
    CandidateMeasure,
    recommend,
    recommendation_reason,
    recommendation_rule,
)
from voicemesh.tts.encoding import (
    AudioEncoder,
    AudioFormat,
    encode_audio,
    media_type,
    output_rate,
    prepare_output,
)
from voicemesh.tts.engine import SynthesisChunk, Synthesizer
from voicemesh.tts.protocol import CompareRequest, SynthesizeRequest, VoiceChoice
from voicemesh.tts.settings import TtsSettings
from voicemesh.tts.state import ENGINE_NAME, TtsMetrics, TtsState, load_state

_LOGGER = logging.getLogger(__name__)

_SAMPLE_TEXT = {
    "en": "Hello! I am {name}. This is how I sound when I read a sentence aloud.",
    "zh": "你好，这是我的声音。很高兴认识你。",  # noqa: RUF001 - Chinese punctuation
}


def get_tts_state(connection: HTTPConnection) -> TtsState:
    """The running replica's state (set by the lifespan)."""
    state: TtsState = connection.app.state.tts
    return state


Tts = Annotated[TtsState, Depends(get_tts_state)]
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
    app.include_router(router)
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


def chosen_voice(state: TtsState, choice: VoiceChoice) -> Voice:
    """The installed voice a request names (by id, speaker index or model)."""
    voice = state.catalogue.resolve(choice.voice_ref(), choice.model, state.settings.default_voice)
    return state.catalogue.installed_voice(voice)


def audio_headers(voice: Voice, fmt: AudioFormat, rate: int) -> dict[str, str]:
    """Headers naming the engine, voice, model, rate and format of an answer."""
    return {
        "X-VoiceMesh-Engine": f"{ENGINE_NAME}/{voice.model.family}",
        "X-VoiceMesh-Voice": voice.id,
        # Percent-encoded: a header is latin-1, a voice name need not be.
        "X-VoiceMesh-Voice-Name": urllib.parse.quote(voice.entry.name),
        "X-VoiceMesh-Speaker-Id": str(voice.entry.speaker_id),
        "X-VoiceMesh-Model": voice.model.id,
        "X-VoiceMesh-Sample-Rate": str(rate),
        "X-VoiceMesh-Format": fmt,
    }


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


def describe_voice(state: TtsState, voice: Voice) -> dict[str, Any]:
    """A voice as the API shows it, with its moods and its measured real-time factor."""
    return {**voice.describe(), "performance": {"rtf": state.voice_rtf.get(voice.id)}}


@router.get("/v1/voices")
async def list_voices(
    state: Tts,
    *,
    model: str | None = None,
    language: str | None = None,
    gender: Gender | None = None,
    tag: str | None = None,
    mood: str | None = None,
    installed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    page: Annotated[int | None, Query(ge=1, description="1-based; sets offset")] = None,
) -> JSONResponse:
    """The catalogue, filtered and paged (by ``offset``, or by ``page`` of ``limit``)."""
    if model is not None:
        state.catalogue.model_entry(model)  # an unknown model is a 404, not an empty list
    found = state.catalogue.filter(
        model=model, language=language, gender=gender, tag=tag, mood=mood, installed=installed
    )
    if page is not None:
        offset = (page - 1) * limit
    shown = found[offset : offset + limit]
    after = offset + len(shown)
    return JSONResponse(
        {
            "voices": [describe_voice(state, v) for v in shown],
            "total": len(found),
            "limit": limit,
            "offset": offset,
            "next_offset": after if after < len(found) else None,
            "default_voice": state.settings.default_voice,
        }
    )


def voice_by_path(state: TtsState, voice_id: str, model: str | None) -> Voice:
    """The voice a path names: an id, ``<model>:<index>``, or an index of ``model``."""
    return state.catalogue.resolve(voice_id, model, state.settings.default_voice)


@router.get("/v1/voices/{voice_id}/sample.wav")
async def get_sample_wav(state: Tts, voice_id: str, model: str | None = None) -> Response:
    """A short WAV of the voice introducing itself (made on first request, then cached)."""
    voice = state.catalogue.installed_voice(voice_by_path(state, voice_id, model))
    state.check_serving()
    sample = await voice_sample(state, voice)
    data = base64.b64decode(sample["audio_base64"])
    headers = audio_headers(voice, "wav", int(sample["sample_rate"]))
    headers["X-VoiceMesh-Duration"] = f"{sample['duration_s']:.3f}"
    return Response(data, media_type="audio/wav", headers=headers)


@router.get("/v1/voices/{voice_id}")
async def get_voice(
    state: Tts, voice_id: str, sample: bool = True, model: str | None = None
) -> JSONResponse:
    """One voice, with a spoken sample when its model is installed here."""
    voice = voice_by_path(state, voice_id, model)
    body = describe_voice(state, voice)
    if sample and voice.installed:
        state.check_serving()
        body["sample"] = await voice_sample(state, voice)
    elif sample:
        body["sample"] = None
        body["sample_error"] = "the voice's model is not installed on this replica"
    return JSONResponse(body)


async def voice_sample(state: TtsState, voice: Voice) -> dict[str, Any]:
    """A short WAV of ``voice`` introducing itself (made once per replica)."""
    cached = state.samples.get(voice.id)
    if cached is not None:
        return cached
    language = voice.entry.language.split("-")[0].lower()
    text = _SAMPLE_TEXT.get(language, _SAMPLE_TEXT["en"]).format(name=voice.entry.name)
    async with state.admission.slot():
        engine = await asyncio.to_thread(state.engines.get, voice.model)
        result = await asyncio.to_thread(engine.synthesize, text, speaker_id=voice.entry.speaker_id)
    data = await asyncio.to_thread(encode_audio, result.audio, result.sample_rate, "wav")
    sample = {
        "text": text,
        "format": "wav",
        "sample_rate": result.sample_rate,
        "duration_s": round(result.duration_s, 3),
        "audio_base64": base64.b64encode(data).decode("ascii"),
    }
    state.samples[voice.id] = sample
    return sample


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
            latency_ms = (time.monotonic() - started) * 1000
            state.note_rtf(result.rtf, voice.id)
            measures.append(
                CandidateMeasure(result.duration_s, candidate.speed, result.rtf, latency_ms)
            )
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
                    "duration_s": round(result.duration_s, 3),
                    "synthesis_s": round(result.synthesis_s, 4),
                    "rtf": round(result.rtf, 4),
                    "latency_ms": round(latency_ms, 1),
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
