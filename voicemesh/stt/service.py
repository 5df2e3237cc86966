"""The streaming Whisper service that ``stt_cpu_ws`` and ``stt_gpu_ws`` both run.

``WS /ws/transcribe`` streams partials and finals; ``POST /v1/transcribe`` decodes a
whole file; ``GET /health`` says whether the model is loaded and on which device.
Each replica registers itself in Redis with its load.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import FastAPI, File, Form, Request, UploadFile, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, PlainTextResponse
from pydantic import Field

from voicemesh.audio import (
    AudioStreamDecoder,
    PcmStreamDecoder,
    decode_audio_file,
    stream_decoder,
)
from voicemesh.errors import BadRequest, PayloadTooLarge, VoiceMeshError
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import (
    drain_on_sigterm,
    registry_status,
    start_heartbeat,
    stop_heartbeat,
)
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    ErrorMessage,
    FinalMessage,
    FlushMessage,
    PartialMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
    VadMessage,
    parse_control,
)
from voicemesh.registry import RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.settings import ServiceSettings
from voicemesh.stt.engines import Device, EngineName, Transcriber, check_language
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.script import ChineseScript, result_postprocessor
from voicemesh.stt.streaming import EngineLabel, StreamingConfig, StreamingSession
from voicemesh.stt.vad import EndpointerConfig

_LOGGER = logging.getLogger(__name__)

ResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "lrc"]

# WebSocket close codes (4000-4999 are the application's own).
CLOSE_NORMAL = 1000
CLOSE_OVERLOADED = 1013
CLOSE_INTERNAL = 1011


class SttSettings(ServiceSettings):
    """Settings of a streaming Whisper service (subclassed per service with a prefix)."""

    kind: str = "stt_cpu_ws"
    """Service name in the registry."""
    model: str = "base"
    """Bundled name (base, tiny.en), a CTranslate2 folder, a .pt checkpoint or a hub name."""
    engine: EngineName | None = None
    """Force an engine; by default it follows the model's form."""
    device: Device = "cpu"
    """cpu, cuda, or auto (cuda when present)."""
    compute_type: str | None = None
    """CTranslate2 compute type; default int8 on CPU, float16 on CUDA."""
    cpu_threads: int = Field(0, ge=0)
    """Threads per decode on CPU (0: the cores shared out between the workers)."""
    workers: int = Field(2, ge=1, le=16)
    """Decodes run at once. Two on CPU, so a final never waits behind a partial in
    progress: on 2 cores, 2 one-thread workers cut end-of-speech -> final p95 from
    1242 to 1095 ms against 1 two-thread worker (benchmarks/stt_stream.py)."""
    beam_size: int = Field(5, ge=1, le=10)
    """Beam width of file transcription (POST /v1/transcribe)."""
    language: str | None = None
    """Default language of sessions; None detects it per utterance."""
    chinese_script: ChineseScript = "simplified"
    """Script of Chinese transcripts: simplified, traditional, or model (as Whisper wrote)."""
    partial_interval_s: float = Field(0.8, ge=0.1, le=10)
    """New audio between partial hypotheses."""
    min_silence_s: float = Field(0.5, ge=0.1, le=5)
    """Silence that ends an utterance."""
    silence_onset_s: float = Field(0.1, ge=0.03, le=5)
    """Silence after which the final is decoded speculatively."""
    hold_s: float = Field(0.5, ge=0, le=5)
    """More silence a doubtful final waits for before it is sent (0: never hold). If the
    speaker goes on, the pause was a hesitation and the utterance is decoded whole."""
    hold_logprob: float = Field(-0.5, le=0)
    """Finals whose decode scores below this average log-probability are doubtful (held)."""
    max_utterance_s: float = Field(24.0, ge=5, le=29)
    """Longest utterance before it is cut (Whisper sees 30 s at most)."""
    use_prefix: bool = False
    """Force partial decodes to continue the stable text (steadier partials)."""
    final_prefix: bool = False
    """Force finals to continue the stable text too (locks in early mistakes)."""
    final_beam_size: int = Field(5, ge=1, le=10)
    """Beam width of finals (partials are greedy)."""
    max_sessions: int = Field(32, ge=1)
    """Sessions beyond this are refused (the gateway then tries another replica)."""
    max_upload_bytes: int = Field(25 * 1024 * 1024, ge=1024)
    """Largest file accepted by POST /v1/transcribe."""
    max_drain_s: float = Field(300.0, ge=0)
    """On SIGTERM, how long live sessions may take to finish before the replica exits."""
    max_upload_seconds: float = Field(3600.0, gt=0)
    """Longest audio accepted by POST /v1/transcribe."""

    def decode_threads(self) -> int:
        """CPU threads of one decode: ``cpu_threads``, or the cores over the workers."""
        if self.cpu_threads:
            return self.cpu_threads
        return max(1, available_cores() // self.workers)

    def streaming_config(self, language: str | None) -> StreamingConfig:
        """The per-session tuning these settings describe."""
        return StreamingConfig(
            language=language or self.language,
            partial_interval_s=self.partial_interval_s,
            max_utterance_s=self.max_utterance_s,
            use_prefix=self.use_prefix,
            final_prefix=self.final_prefix,
            final_beam_size=self.final_beam_size,
            hold_s=self.hold_s,
            hold_logprob=self.hold_logprob,
            endpointer=EndpointerConfig(
                min_silence_s=self.min_silence_s, silence_onset_s=self.silence_onset_s
            ),
        )


def load_engine(settings: SttSettings) -> Transcriber:
    """Load the transcriber the settings name (a plain function: easy to test)."""
    from voicemesh.stt.engines import load_transcriber

    return load_transcriber(
        settings.model,
        engine=settings.engine,
        device=settings.device,
        compute_type=settings.compute_type,
        cpu_threads=settings.decode_threads(),
        beam_size=settings.beam_size,
    )


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, not the host's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


class SttState:
    """What the app holds while it runs."""

    def __init__(
        self, settings: SttSettings, transcriber: Transcriber, metrics: ServiceMetrics
    ) -> None:
        self.settings = settings
        self.transcriber = transcriber
        self.scheduler = DecodeScheduler(
            transcriber, workers=settings.workers,
            postprocess=result_postprocessor(settings.chinese_script),
        )
        self.metrics = metrics
        self.sessions: dict[str, StreamingSession] = {}
        self.draining = False
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None

    @property
    def label(self) -> EngineLabel:
        """Engine, device and model as finals report them."""
        t = self.transcriber
        return EngineLabel(engine=t.engine, device=t.device, model=self.settings.model,
                           backend=self.settings.instance_id)

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
                max_sessions=s.max_sessions,
            ),
            draining=self.draining,
            started_at=self.started_at,
            updated_at=time.time(),
        )


def create_stt_app(settings: SttSettings, transcriber: Transcriber | None = None) -> FastAPI:
    """Build the streaming Whisper app; the lifespan loads the model unless one is given."""
    metrics = ServiceMetrics(settings.kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine: Transcriber = (
            transcriber if transcriber is not None
            else await asyncio.to_thread(load_engine, settings)
        )
        state = SttState(settings, engine, metrics)
        app.state.stt = state
        await asyncio.to_thread(_warm_up, state)
        state.heartbeat = await start_heartbeat(settings, state.replica_info)

        async def start_draining() -> None:
            state.draining = True
            if state.heartbeat is not None:
                await state.heartbeat.beat_now()

        drain_on_sigterm(lambda: not state.sessions, start_draining,
                         max_drain_s=settings.max_drain_s)
        _LOGGER.info("%s ready: %s %s on %s", settings.kind, engine.engine, settings.model,
                     engine.device)
        try:
            yield
        finally:
            state.draining = True
            await stop_heartbeat(state.heartbeat)
            state.scheduler.close()

    app = FastAPI(title=f"VoiceMesh {settings.kind}", lifespan=lifespan)
    install_http_basics(app, metrics)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        state: SttState = request.app.state.stt
        registry = registry_status(state.heartbeat)
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
            "registry": registry,
        }
        return JSONResponse(body, status_code=503 if state.draining else 200)

    @app.post("/v1/transcribe", response_model=None)
    async def transcribe_file(
        request: Request,
        *,
        file: Annotated[UploadFile, File(description="audio: wav, flac, mp3, ogg, webm, ...")],
        response_format: Annotated[ResponseFormat, Form()] = "json",
        language: Annotated[str | None, Form()] = None,
        word_timestamps: Annotated[bool, Form()] = False,
        prompt: Annotated[str | None, Form()] = None,
    ) -> JSONResponse | PlainTextResponse:
        from voicemesh.stt.formats import render_transcript

        state: SttState = request.app.state.stt
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
            audio, Priority.BATCH, language=language, word_timestamps=word_timestamps,
            segment_timestamps=True, prompt=prompt or None,
        )
        state.metrics.observe("transcribe_file", time.perf_counter() - started)
        state.metrics.count("transcribe_file", "ok")
        body, media_type = render_transcript(result, response_format)
        headers = {"X-VoiceMesh-Engine": f"{state.transcriber.engine}/{state.transcriber.device}"}
        if isinstance(body, dict):
            return JSONResponse(body, headers=headers)
        return PlainTextResponse(body, media_type=media_type, headers=headers)

    @app.websocket("/ws/transcribe")
    async def transcribe_stream(ws: WebSocket) -> None:
        await ws.accept()
        state: SttState = ws.app.state.stt
        await StreamHandler(ws, state).run()

    return app


def _warm_up(state: SttState) -> None:
    """Run one decode so the first real request does not pay for lazy init."""
    import numpy as np

    silence = np.zeros(16000, dtype=np.float32)
    try:
        state.transcriber.transcribe(silence, language="en")
    except Exception:
        _LOGGER.exception("warm-up decode failed")


class StreamHandler:
    """One ``/ws/transcribe`` connection: parse frames, feed the session, send results."""

    def __init__(self, ws: WebSocket, state: SttState) -> None:
        self.ws = ws
        self.state = state
        self.settings = state.settings
        self.session_id = uuid.uuid4().hex[:12]
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(
            max_frame_bytes=self.settings.max_frame_bytes)
        self.session: StreamingSession | None = None
        self.audio_seen = False
        self._send_lock = asyncio.Lock()
        self.open = True

    async def send(self, message: ReadyMessage | PartialMessage | FinalMessage | VadMessage
                   | ErrorMessage) -> None:
        """Send one message; a closed socket is not an error here."""
        if not self.open:
            return
        async with self._send_lock:
            try:
                await self.ws.send_text(message.dumps())
            except (WebSocketDisconnect, RuntimeError):
                self.open = False
                return
        if isinstance(message, FinalMessage):
            self.state.metrics.count("final", "ok")
        elif isinstance(message, ErrorMessage):
            self.state.metrics.error(message.code)

    async def error(self, code: str, message: str, *, fatal: bool = False) -> None:
        """Tell the client what was wrong; the session stays open unless fatal."""
        _LOGGER.info("session %s: %s: %s", self.session_id, code, message)
        await self.send(ErrorMessage(code=code, message=message, fatal=fatal))

    def _new_session(self, language: str | None) -> StreamingSession:
        return StreamingSession(
            self.state.scheduler, self.send, self.state.label,
            self.settings.streaming_config(language),
        )

    async def run(self) -> None:
        """Serve the connection until the client stops or goes away."""
        state = self.state
        if state.draining or len(state.sessions) >= self.settings.max_sessions:
            await self.error("busy", "this replica takes no new sessions; try another",
                             fatal=True)
            await self.ws.close(CLOSE_OVERLOADED)
            return
        self.session = self._new_session(None)
        state.sessions[self.session_id] = self.session
        state.metrics.active_sessions.labels(self.settings.kind).inc()
        label = state.label
        await self.send(ReadyMessage(session_id=self.session_id, engine=label.engine,
                                     device=label.device, model=label.model,
                                     backend=label.backend))
        try:
            await self._receive_loop()
        except WebSocketDisconnect:
            pass
        except Exception:
            _LOGGER.exception("session %s failed", self.session_id)
            await self.error("internal_error", "the engine failed on this session", fatal=True)
            with contextlib.suppress(Exception):
                await self.ws.close(CLOSE_INTERNAL)
        finally:
            self.open = False
            if self.session is not None:
                self.session.closed = True
            state.sessions.pop(self.session_id, None)
            state.metrics.active_sessions.labels(self.settings.kind).dec()

    async def _receive_loop(self) -> None:
        assert self.session is not None
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            data = message.get("bytes")
            if data is not None:
                try:
                    audio = self.decoder.decode(data)
                except VoiceMeshError as exc:
                    await self.error(exc.code, exc.message)
                    continue
                self.audio_seen = True
                await self.session.feed(audio)
                continue
            text = message.get("text") or ""
            try:
                control = parse_control(text)
            except VoiceMeshError as exc:
                await self.error(exc.code, exc.message)
                continue
            if isinstance(control, StartMessage):
                await self._start(control)
            elif isinstance(control, FlushMessage):
                await self.session.feed(self.decoder.flush())
                await self.session.flush("flush", until=control.until)
            elif isinstance(control, StopMessage):
                await self.session.feed(self.decoder.flush())
                await self.session.close()
                with contextlib.suppress(Exception):
                    await self.ws.close(CLOSE_NORMAL)
                return

    async def _start(self, start: StartMessage) -> None:
        if self.audio_seen:
            await self.error("bad_message", "'start' must come before the first audio frame")
            return
        try:
            language = check_language(self.state.transcriber,
                                      start.language or self.settings.language)
        except VoiceMeshError as exc:
            await self.error(exc.code, exc.message)
            return
        try:
            self.decoder = stream_decoder(
                sample_rate=start.sample_rate, encoding=start.encoding, channels=start.channels,
                max_frame_bytes=self.settings.max_frame_bytes,
            )
        except VoiceMeshError as exc:
            await self.error(exc.code, exc.message)
            return
        assert self.session is not None
        self.session.config.language = language
