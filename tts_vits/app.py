"""Entry point of ``tts_vits``: VITS voices through sherpa-onnx, a catalogue, streaming, A/B.

Run: ``uvicorn --factory tts_vits.app:create_app``.

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
import dataclasses
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from prometheus_client import Histogram
from pydantic import Field
from pydantic_settings import SettingsConfigDict

from voicemesh.errors import BadRequest, EngineUnavailable, PayloadTooLarge
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import drain_on_sigterm, registry_status, start_heartbeat, stop_heartbeat
from voicemesh.metrics import LATENCY_BUCKETS, ServiceMetrics
from voicemesh.registry import RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.settings import CommonSettings, ServiceSettings
from voicemesh.tts.catalogue import ModelEntry, Voice, VoiceCatalogue, model_files
from voicemesh.tts.compare import RECOMMENDATION_RULE, CandidateMeasure, recommend
from voicemesh.tts.encoding import (
    AudioEncoder,
    AudioFormat,
    encode_audio,
    media_type,
    output_rate,
    prepare_output,
)
from voicemesh.tts.engine import SynthesisChunk, Synthesizer
from voicemesh.tts.protocol import CompareRequest, SynthesizeRequest

_LOGGER = logging.getLogger(__name__)

ENGINE_NAME = "sherpa-onnx"
_SAMPLE_TEXT = {
    "en": "Hello! I am {name}. This is how I sound when I read a sentence aloud.",
    "zh": "你好，这是我的声音。很高兴认识你。",  # noqa: RUF001 - Chinese punctuation
}
_RTF_SMOOTHING = 0.2


class TtsVitsSettings(ServiceSettings):
    """``VOICEMESH_TTS_VITS_*``: the VITS text-to-speech service."""

    model_config = SettingsConfigDict(env_prefix="VOICEMESH_TTS_VITS_", extra="ignore")

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


@lru_cache
def get_settings() -> TtsVitsSettings:
    """Settings from the environment, read once."""
    return TtsVitsSettings()


class TtsMetrics(ServiceMetrics):
    """The common metrics plus synthesis time, time to first chunk and characters per second."""

    def __init__(self, service: str) -> None:
        super().__init__(service)
        self.synthesis_time = Histogram(
            "voicemesh_tts_synthesis_seconds", "Wall time of a whole synthesis",
            ["voice"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.first_chunk = Histogram(
            "voicemesh_tts_first_chunk_seconds", "Time from request to the first audio chunk",
            ["mode"], buckets=LATENCY_BUCKETS, registry=self.registry,
        )
        self.chars_per_second = Histogram(
            "voicemesh_tts_chars_per_second", "Characters synthesised per second of wall time",
            buckets=(25, 50, 100, 200, 400, 800, 1600, 3200), registry=self.registry,
        )
        self.rtf = Histogram(
            "voicemesh_tts_rtf", "Real-time factor (synthesis time / audio duration)",
            buckets=(0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1.0),
            registry=self.registry,
        )


class Admission:
    """Bounded concurrency: ``limit`` requests run, ``max_queue`` wait up to a timeout."""

    def __init__(self, limit: int, max_queue: int, timeout_s: float) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.waiting = 0
        self.active = 0

    async def acquire(self) -> None:
        """Take a slot, or raise EngineUnavailable(busy) when the queue is full or too slow."""
        if self.waiting >= self.max_queue and self._semaphore.locked():
            raise EngineUnavailable(
                f"this replica is busy ({self.active} running, {self.waiting} waiting); "
                "try again or another replica", code="busy")
        self.waiting += 1
        try:
            await asyncio.wait_for(self._semaphore.acquire(), timeout=self.timeout_s)
        except TimeoutError as exc:
            raise EngineUnavailable(
                f"no synthesis slot within {self.timeout_s:g} s ({self.active} running, "
                f"{self.waiting - 1} waiting); try again or another replica", code="busy",
            ) from exc
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        """Give the slot back."""
        self.active -= 1
        self._semaphore.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with admission.slot():`` around one synthesis."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()


class EngineSet:
    """One loaded engine per catalogue model, loaded on first use (thread-safe)."""

    def __init__(self, settings: TtsVitsSettings, catalogue: VoiceCatalogue,
                 espeak_data: Path | None) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.espeak_data = espeak_data
        self.engines: dict[str, Synthesizer] = {}
        self._lock = threading.Lock()

    def get(self, model: ModelEntry) -> Synthesizer:
        """The engine for ``model``, loading it now if needed."""
        engine = self.engines.get(model.id)
        if engine is not None:
            return engine
        with self._lock:
            engine = self.engines.get(model.id)
            if engine is None:
                from voicemesh.tts.engine import SherpaSynthesizer

                files = model_files(model, self.catalogue.models_dir, self.espeak_data)
                if model.bundled:
                    from voicemesh.tts.prepare import piper_model_files

                    files = piper_model_files(files.model.parent, self.espeak_data or Path())
                if self.settings.duration_noise is not None:
                    files = dataclasses.replace(files, noise_scale_w=self.settings.duration_noise)
                if self.settings.voice_noise is not None:
                    files = dataclasses.replace(files, noise_scale=self.settings.voice_noise)
                engine = SherpaSynthesizer(
                    files, language=model.language, num_threads=self.settings.num_threads,
                    pool_size=self.settings.pool_size,
                )
                self.engines[model.id] = engine
        return engine


class TtsState:
    """What the app holds while it runs."""

    def __init__(self, settings: TtsVitsSettings, catalogue: VoiceCatalogue, engines: EngineSet,
                 metrics: TtsMetrics) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.engines = engines
        self.metrics = metrics
        self.admission = Admission(settings.max_concurrent, settings.max_queue,
                                   settings.queue_timeout_s)
        self.draining = False
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None
        self.recent_rtf: float | None = None
        self.samples: dict[str, dict[str, Any]] = {}

    def note_rtf(self, rtf: float) -> None:
        """Fold one request's real-time factor into the moving average the registry shows."""
        self.metrics.rtf.observe(rtf)
        prev = self.recent_rtf
        self.recent_rtf = rtf if prev is None else prev + _RTF_SMOOTHING * (rtf - prev)

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it."""
        s = self.settings
        return ReplicaInfo(
            instance_id=s.instance_id, kind=s.kind, url=s.public_url, device="cpu",
            model=s.default_voice, engine=ENGINE_NAME,
            capabilities=["synthesize", "stream", "compare", "voices"],
            load=ReplicaLoad(active_sessions=self.admission.active, queue=self.admission.waiting,
                             rtf=self.recent_rtf,
                             max_sessions=s.max_concurrent + s.max_queue),
            draining=self.draining, started_at=self.started_at, updated_at=time.time(),
        )


def _prepare_bundled(catalogue: VoiceCatalogue) -> Path | None:
    """Prepare every bundled model the catalogue names; the espeak-ng data folder if any."""
    from voicemesh import assets
    from voicemesh.errors import ModelAssetError

    for model in catalogue.models.values():
        if model.bundled:
            try:
                assets.prepare_model(model.bundled, models_dir=catalogue.models_dir,
                                     progress=False)
            except ModelAssetError as exc:
                _LOGGER.warning("bundled model %s not prepared: %s", model.bundled, exc.message)
    try:
        from voicemesh.tts.prepare import espeak_data_dir

        return espeak_data_dir()
    except ModelAssetError:
        return None


def load_state(settings: TtsVitsSettings, metrics: TtsMetrics) -> TtsState:
    """Prepare bundled voices, read the catalogue, load the default voice (and preloads)."""
    models_dir = settings.models_dir or CommonSettings().models_path
    catalogue = VoiceCatalogue.load(models_dir, settings.catalogue_file)
    espeak = _prepare_bundled(catalogue)
    catalogue = VoiceCatalogue.load(models_dir, settings.catalogue_file)  # installed changed
    engines = EngineSet(settings, catalogue, espeak)
    default = catalogue.installed_voice(settings.default_voice)
    engine = engines.get(default.model)
    engine.synthesize("Ready.", speaker_id=default.entry.speaker_id)  # warm up
    for model_id in settings.preload:
        model = catalogue.models.get(model_id)
        if model is None or model.id not in catalogue.installed_models:
            _LOGGER.warning("preload: model %s is not installed; skipped", model_id)
            continue
        engines.get(model)
    return TtsState(settings, catalogue, engines, metrics)


def check_text(text: str, limit: int) -> str:
    """The text when it is speakable: 413 past ``limit`` characters, 422 when empty."""
    if len(text) > limit:
        raise PayloadTooLarge(
            f"text is {len(text)} characters, over the limit of {limit}; split it into "
            "several requests", code="text_too_long",
        )
    if not text.strip():
        raise EmptyText("text is empty: give at least one word to speak", code="empty_text")
    return text


class EmptyText(BadRequest):
    """Text with nothing to speak."""

    code = "empty_text"
    status_code = 422


def _headers(voice: Voice, fmt: AudioFormat, rate: int) -> dict[str, str]:
    return {
        "X-VoiceMesh-Engine": f"{ENGINE_NAME}/{voice.model.family}",
        "X-VoiceMesh-Voice": voice.id,
        "X-VoiceMesh-Model": voice.model.id,
        "X-VoiceMesh-Sample-Rate": str(rate),
        "X-VoiceMesh-Format": fmt,
    }


def create_app(settings: TtsVitsSettings | None = None) -> FastAPI:
    """The app uvicorn serves; tests pass their own settings."""
    settings = settings or get_settings()
    metrics = TtsMetrics(settings.kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        state = await asyncio.to_thread(load_state, settings, metrics)
        app.state.tts = state
        state.heartbeat = await start_heartbeat(settings, state.replica_info)

        async def start_draining() -> None:
            state.draining = True
            if state.heartbeat is not None:
                await state.heartbeat.beat_now()

        drain_on_sigterm(lambda: state.admission.active == 0, start_draining,
                         max_drain_s=settings.max_drain_s)
        _LOGGER.info("%s ready: default voice %s, %d voices (%d models installed)",
                     settings.kind, settings.default_voice, len(state.catalogue.voices),
                     len(state.catalogue.installed_models))
        try:
            yield
        finally:
            state.draining = True
            await stop_heartbeat(state.heartbeat)

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)

    def state_of(request: Request) -> TtsState:
        state: TtsState = request.app.state.tts
        if state.draining:
            raise EngineUnavailable("this replica is draining; use another", code="draining")
        return state

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state: TtsState = request.app.state.tts
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

    @app.get("/v1/voices")
    async def list_voices(
        request: Request,
        *,
        model: str | None = None,
        language: str | None = None,
        gender: str | None = None,
        tag: str | None = None,
        installed: bool | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 50,
        offset: Annotated[int, Query(ge=0)] = 0,
    ) -> JSONResponse:
        state: TtsState = request.app.state.tts
        found = state.catalogue.filter(model=model, language=language, gender=gender, tag=tag,
                                       installed=installed)
        page = found[offset:offset + limit]
        after = offset + len(page)
        return JSONResponse({
            "voices": [v.describe() for v in page],
            "total": len(found),
            "limit": limit,
            "offset": offset,
            "next_offset": after if after < len(found) else None,
            "default_voice": settings.default_voice,
        })

    @app.get("/v1/voices/{voice_id}")
    async def get_voice(request: Request, voice_id: str, sample: bool = True) -> JSONResponse:
        state: TtsState = request.app.state.tts
        voice = state.catalogue.voice(voice_id)
        body = voice.describe()
        if sample and voice.installed:
            body["sample"] = await _sample(state_of(request), voice)
        elif sample:
            body["sample"] = None
            body["sample_error"] = "the voice's model is not installed on this replica"
        return JSONResponse(body)

    async def _sample(state: TtsState, voice: Voice) -> dict[str, Any]:
        cached = state.samples.get(voice.id)
        if cached is not None:
            return cached
        language = voice.entry.language.split("-")[0].lower()
        text = _SAMPLE_TEXT.get(language, _SAMPLE_TEXT["en"]).format(name=voice.entry.name)
        async with state.admission.slot():
            engine = await asyncio.to_thread(state.engines.get, voice.model)
            result = await asyncio.to_thread(engine.synthesize, text,
                                             speaker_id=voice.entry.speaker_id)
        data = await asyncio.to_thread(encode_audio, result.audio, result.sample_rate, "wav")
        sample = {"text": text, "format": "wav", "sample_rate": result.sample_rate,
                  "duration_s": round(result.duration_s, 3),
                  "audio_base64": base64.b64encode(data).decode("ascii")}
        state.samples[voice.id] = sample
        return sample

    @app.post("/v1/synthesize", response_model=None)
    async def synthesize(request: Request, body: SynthesizeRequest) -> Response:
        state = state_of(request)
        text = check_text(body.text, settings.max_chars)
        voice = state.catalogue.installed_voice(body.voice or settings.default_voice)
        rate = output_rate(body.format, body.sample_rate or voice.model.sample_rate)
        headers = _headers(voice, body.format, rate)
        if body.stream:
            return await _stream(request, state, voice, text, body=body, rate=rate,
                                 headers=headers)
        started = time.monotonic()
        async with state.admission.slot():
            engine = await asyncio.to_thread(state.engines.get, voice.model)
            result = await asyncio.to_thread(engine.synthesize, text,
                                             speaker_id=voice.entry.speaker_id, speed=body.speed)
        audio = prepare_output(result.audio, result.sample_rate, rate, body.volume_db)
        data = await asyncio.to_thread(encode_audio, audio, rate, body.format)
        elapsed = time.monotonic() - started
        _observe(state, voice, "whole", chars=len(text), elapsed=elapsed,
                 first_s=result.first_chunk_s, audio_s=result.duration_s)
        headers.update({
            "X-VoiceMesh-Duration": f"{len(audio) / rate:.3f}",
            "X-VoiceMesh-Synthesis-Time": f"{result.synthesis_s:.3f}",
            "X-VoiceMesh-RTF": f"{result.rtf:.4f}",
        })
        return Response(data, media_type=media_type(body.format, rate), headers=headers)

    async def _stream(request: Request, state: TtsState, voice: Voice, text: str, *,
                      body: SynthesizeRequest, rate: int, headers: dict[str, str]) -> Response:
        started = time.monotonic()
        await state.admission.acquire()
        try:
            engine = await asyncio.to_thread(state.engines.get, voice.model)
            pieces: Iterator[SynthesisChunk] = engine.synthesize_chunks(
                text, speaker_id=voice.entry.speaker_id, speed=body.speed)
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
            resampler = (soxr.ResampleStream(engine.sample_rate, rate, 1, dtype="float32")
                         if rate != engine.sample_rate else None)
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
                _observe(state, voice, "stream", chars=len(text),
                         elapsed=time.monotonic() - started, first_s=first_s, audio_s=audio_s)
            except Exception:
                _LOGGER.exception("request %s: stream failed after it started", rid)
                state.metrics.error("stream_failed")
            finally:
                state.admission.release()

        return StreamingResponse(chunks(), media_type=media_type(body.format, rate),
                                 headers={**headers, "X-VoiceMesh-Stream": "sentences"})

    @app.post("/v1/compare")
    async def compare(request: Request, body: CompareRequest) -> JSONResponse:
        state = state_of(request)
        text = check_text(body.text, settings.max_chars)
        if len(body.candidates) > settings.max_compare_candidates:
            raise BadRequest(
                f"{len(body.candidates)} candidates; at most {settings.max_compare_candidates}",
                code="too_many_candidates")
        voices = [state.catalogue.installed_voice(c.voice) for c in body.candidates]
        out: list[dict[str, Any]] = []
        measures: list[CandidateMeasure] = []
        async with state.admission.slot():
            for index, (candidate, voice) in enumerate(zip(body.candidates, voices, strict=True)):
                engine = await asyncio.to_thread(state.engines.get, voice.model)
                result = await asyncio.to_thread(engine.synthesize, text,
                                                 speaker_id=voice.entry.speaker_id,
                                                 speed=candidate.speed)
                rate = output_rate(body.format, body.sample_rate or result.sample_rate)
                audio = prepare_output(result.audio, result.sample_rate, rate, 0.0)
                data = await asyncio.to_thread(encode_audio, audio, rate, body.format)
                state.note_rtf(result.rtf)
                measures.append(CandidateMeasure(result.duration_s, candidate.speed, result.rtf))
                out.append({
                    "index": index, "voice": voice.id, "model": voice.model.id,
                    "engine": f"{ENGINE_NAME}/{voice.model.family}", "speed": candidate.speed,
                    "format": body.format, "sample_rate": rate,
                    "duration_s": round(result.duration_s, 3),
                    "synthesis_s": round(result.synthesis_s, 4),
                    "rtf": round(result.rtf, 4),
                    "chars_per_s": round(len(text) / max(result.synthesis_s, 1e-6), 1),
                    "audio_base64": base64.b64encode(data).decode("ascii"),
                })
        best = recommend(measures)
        state.metrics.count("compare", "ok")
        return JSONResponse({
            "text": text,
            "candidates": out,
            "recommendation": {"index": best, "voice": out[best]["voice"] if best is not None
                               else None, "rule": RECOMMENDATION_RULE},
        })

    return app


def _observe(state: TtsState, voice: Voice, mode: str, *, chars: int, elapsed: float,
             first_s: float, audio_s: float) -> None:
    """Record one finished synthesis in the metrics and the replica's moving RTF."""
    metrics = state.metrics
    metrics.synthesis_time.labels(voice.id).observe(elapsed)
    metrics.first_chunk.labels(mode).observe(first_s)
    metrics.chars_per_second.observe(chars / max(elapsed, 1e-6))
    metrics.observe(f"synthesize_{mode}", elapsed)
    metrics.count("synthesize", "ok")
    if audio_s > 0:
        state.note_rtf(elapsed / audio_s)
