"""The streaming Whisper service that ``stt_cpu_ws`` and ``stt_gpu_ws`` both run.

``WS /ws/transcribe`` streams partials and finals; ``POST /v1/transcribe`` decodes a
whole file; ``GET /health`` says whether the model is loaded and on which device.
Each replica registers itself in Redis with its load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import (
    APIRouter,
    Depends,
    FastAPI,
    File,
    Form,
    UploadFile,
    WebSocket,
)
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, PlainTextResponse

from voicemesh.audio import AudioStreamDecoder, PcmStreamDecoder, stream_decoder
from voicemesh.audio_files import decode_audio_file
from voicemesh.errors import BadRequest, PayloadTooLarge, VoiceMeshError
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    SAMPLE_RATE,
    FinalMessage,
    FlushMessage,
    PartialMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
    VadMessage,
)
from voicemesh.registry import AsrModel, RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.stt.engines import load_transcriber
from voicemesh.stt.formats import render_transcript
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.script import result_postprocessor
from voicemesh.stt.settings import SttSettings
from voicemesh.stt.streaming import StreamingSession
from voicemesh.stt.streaming_rules import EngineLabel
from voicemesh.stt.types import Transcriber, check_language
from voicemesh.wire import ClientSocket

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
        beam_size=settings.beam_size,
    )


class SttState:
    """What the app holds while it runs."""

    def __init__(
        self,
        settings: SttSettings,
        transcriber: Transcriber,
        metrics: ServiceMetrics,
        model_load_ms: float | None = None,
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.model_load_ms = model_load_ms
        """How long the lifespan took to load the model; None when it was handed in."""
        self.scheduler = DecodeScheduler(
            transcriber,
            workers=settings.workers,
            postprocess=result_postprocessor(settings.chinese_script),
        )
        self.metrics = metrics
        self.sessions: dict[str, StreamingSession] = {}
        self.draining = False
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None

    def mark_draining(self) -> None:
        """Take no new sessions from now on (health and registry say so)."""
        self.draining = True

    @property
    def label(self) -> EngineLabel:
        """Engine, device and model as finals report them."""
        t = self.transcriber
        return EngineLabel(
            engine=t.engine,
            device=t.device,
            model=self.settings.model,
            backend=self.settings.instance_id,
        )

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it."""
        s = self.settings
        return ReplicaInfo(
            instance_id=s.instance_id,
            kind=s.kind,
            url=s.public_url,
            device=self.transcriber.device,
            model=s.model,
            engine=self.transcriber.engine,
            capabilities=["transcribe", "stream", "partials"],
            load=ReplicaLoad(
                active_sessions=len(self.sessions),
                queue=self.scheduler.queue_depth + self.scheduler.busy,
                rtf=self.scheduler.recent_rtf,
                latency_ms=self.scheduler.recent_latency_ms,
                max_sessions=s.max_sessions,
            ),
            asr_models=[
                AsrModel(
                    name=s.model,
                    engine=self.transcriber.engine,
                    use="transcribe",
                    languages=sorted(getattr(self.transcriber, "languages", None) or ()),
                    load_ms=self.model_load_ms,
                )
            ],
            draining=self.draining,
            started_at=self.started_at,
            updated_at=time.time(),
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

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        engine: Transcriber = (
            transcriber
            if transcriber is not None
            else await asyncio.to_thread(load_engine, settings)
        )
        handed_in = transcriber is not None
        load_ms = None if handed_in else round((time.perf_counter() - started) * 1000, 1)
        state = SttState(settings, engine, metrics, load_ms)
        app.state.stt = state
        await asyncio.to_thread(_warm_up, state)
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
                    engine.engine,
                    settings.model,
                    engine.device,
                )
                yield
        finally:
            state.scheduler.close()

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)
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
        "model_loaded": True,
        "model": settings.model,
        "engine": state.transcriber.engine,
        "device": state.transcriber.device,
        "sessions": len(state.sessions),
        "queue": state.scheduler.queue_depth,
        "rtf": state.scheduler.recent_rtf,
        "latency_ms": state.scheduler.recent_latency_ms,
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
        "X-VoiceMesh-Engine": f"{state.transcriber.engine}/{state.transcriber.device}",
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


def _warm_up(state: SttState) -> None:
    """Run one decode so the first real request does not pay for lazy init."""
    import numpy as np

    silence = np.zeros(SAMPLE_RATE, dtype=np.float32)  # one second
    try:
        state.transcriber.transcribe(silence, language="en")
    except Exception:
        _LOGGER.exception("warm-up decode failed")


class StreamHandler:
    """One ``/ws/transcribe`` connection: parse frames, feed the session, send results."""

    def __init__(self, ws: WebSocket, state: SttState) -> None:
        self.state = state
        self.settings = state.settings
        self.session_id = uuid.uuid4().hex[:12]
        self.client = ClientSocket(ws, metrics=state.metrics, name=self.session_id)
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(
            max_frame_bytes=self.settings.max_frame_bytes
        )
        self.session: StreamingSession | None = None
        self.audio_seen = False

    async def send(
        self, message: ReadyMessage | PartialMessage | FinalMessage | VadMessage
    ) -> None:
        """Send one message; a final that reached the client is counted."""
        await self.client.send(message)
        if isinstance(message, FinalMessage) and self.client.open:
            self.state.metrics.count("final", "ok")

    def _new_session(self, language: str | None) -> StreamingSession:
        return StreamingSession(
            self.state.scheduler,
            self.send,
            self.state.label,
            self.settings.streaming_config(language),
        )

    async def run(self) -> None:
        """Serve the connection until the client stops or goes away."""
        state = self.state
        if state.draining or len(state.sessions) >= self.settings.max_sessions:
            await self.client.refuse(
                "busy", "this replica takes no new sessions; try another", CLOSE_TRY_AGAIN
            )
            return
        self.session = self._new_session(None)
        state.sessions[self.session_id] = self.session
        state.metrics.active_sessions.labels(self.settings.kind).inc()
        label = state.label
        await self.send(
            ReadyMessage(
                session_id=self.session_id,
                engine=label.engine,
                device=label.device,
                model=label.model,
                backend=label.backend,
            )
        )
        try:
            await self._receive_loop()
        except Exception:
            _LOGGER.exception("session %s failed", self.session_id)
            await self.client.error(
                "internal_error", "the engine failed on this session", fatal=True
            )
            await self.client.close(CLOSE_INTERNAL)
        finally:
            self.client.open = False
            if self.session is not None:
                self.session.closed = True
            state.sessions.pop(self.session_id, None)
            state.metrics.active_sessions.labels(self.settings.kind).dec()

    async def _receive_loop(self) -> None:
        assert self.session is not None
        async for item in self.client.receive():
            if isinstance(item, bytes):
                try:
                    audio = self.decoder.decode(item)
                except VoiceMeshError as exc:
                    await self.client.error(exc.code, exc.message)
                    continue
                self.audio_seen = True
                await self.session.feed(audio)
            elif isinstance(item, StartMessage):
                await self._start(item)
            elif isinstance(item, FlushMessage):
                await self.session.feed(self.decoder.flush())
                await self.session.flush("flush", until=item.until)
            elif isinstance(item, StopMessage):
                await self.session.feed(self.decoder.flush())
                await self.session.close()
                await self.client.close(CLOSE_NORMAL)
                return

    async def _start(self, start: StartMessage) -> None:
        if self.audio_seen:
            await self.client.error("bad_message", "'start' must come before the first audio frame")
            return
        try:
            language = check_language(
                self.state.transcriber, start.language or self.settings.language
            )
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        try:
            self.decoder = stream_decoder(
                sample_rate=start.sample_rate,
                encoding=start.encoding,
                channels=start.channels,
                max_frame_bytes=self.settings.max_frame_bytes,
            )
        except VoiceMeshError as exc:
            await self.client.error(exc.code, exc.message)
            return
        assert self.session is not None
        self.session.config.language = language
