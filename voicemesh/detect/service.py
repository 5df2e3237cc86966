"""The speech detector ``stt_tiny_ws`` runs: ``WS /ws/detect`` tells speech from silence.

Every binary frame (PCM16 16 kHz mono unless a ``start`` message says otherwise) is
scored by Silero VAD as it arrives; the reply is the seed format
``{"speech_detected", "probability", "t"}`` for each frame that completes at least
one 32 ms window. ``speech_start`` / ``speech_end`` events mark utterances; at
``speech_end`` Whisper tiny.en decodes the segment to confirm it is speech (a cough
or a door gives no words) and to give a fast hypothesis text.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse

from voicemesh.audio import AudioStreamDecoder, PcmStreamDecoder, stream_decoder
from voicemesh.detect.settings import DetectorSettings
from voicemesh.engine_guard import guard_engine
from voicemesh.errors import VoiceMeshError
from voicemesh.http import install_http_basics
from voicemesh.lifecycle import apply_log_level, registry_status, serve_replica
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    SAMPLE_RATE,
    DetectionMessage,
    DetectorError,
    SpeechEndEvent,
    SpeechStartEvent,
    StartMessage,
    StopMessage,
)
from voicemesh.registry import AsrModel, RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.stt.engines import load_transcriber
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.types import Transcriber
from voicemesh.stt.vad import Endpointer, EndpointerConfig, StreamingVad
from voicemesh.wire import ClientSocket

_LOGGER = logging.getLogger(__name__)


def load_confirmer(settings: DetectorSettings) -> Transcriber | None:
    """Whisper tiny.en for confirmation, or None when confirmation is off."""
    if not settings.confirm:
        return None
    return load_transcriber(settings.model, device="cpu", cpu_threads=settings.cpu_threads)


class DetectorState:
    """What the detector app holds while it runs."""

    def __init__(
        self,
        settings: DetectorSettings,
        confirmer: Transcriber | None,
        metrics: ServiceMetrics,
        confirmer_load_ms: float | None = None,
    ) -> None:
        self.settings = settings
        self.confirmer = confirmer
        self.confirmer_load_ms = confirmer_load_ms
        """How long loading Whisper tiny.en took; None when it was handed in (or is off)."""
        self.scheduler = DecodeScheduler(confirmer, workers=1) if confirmer else None
        self.metrics = metrics
        self.sessions = 0
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None

    def asr_models(self) -> list[AsrModel]:
        """The confirming Whisper model, if any: loaded, but only to confirm speech."""
        if self.confirmer is None:
            return []
        return [
            AsrModel(
                name=self.settings.model,
                engine=self.confirmer.engine,
                use="confirm",
                languages=sorted(getattr(self.confirmer, "languages", None) or ()),
                load_ms=self.confirmer_load_ms,
            )
        ]

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it."""
        s = self.settings
        return ReplicaInfo(
            instance_id=s.instance_id,
            kind=s.kind,
            url=s.public_url,
            device="cpu",
            model=f"silero-vad+{s.model}" if self.confirmer else "silero-vad",
            engine="silero-vad",
            capabilities=["detect", "confirm"] if self.confirmer else ["detect"],
            load=ReplicaLoad(
                active_sessions=self.sessions,
                queue=self.scheduler.queue_depth if self.scheduler else 0,
                rtf=self.scheduler.recent_rtf if self.scheduler else None,
                latency_ms=self.scheduler.recent_latency_ms if self.scheduler else None,
            ),
            asr_models=self.asr_models(),
            started_at=self.started_at,
            updated_at=time.time(),
        )


def get_detector_state(connection: HTTPConnection) -> DetectorState:
    """The running detector's state (set by the lifespan)."""
    state: DetectorState = connection.app.state.detector
    return state


Detector = Annotated[DetectorState, Depends(get_detector_state)]
router = APIRouter()


def create_detector_app(
    settings: DetectorSettings, confirmer: Transcriber | None = None
) -> FastAPI:
    """The detector app; the lifespan loads Silero and (unless given) Whisper tiny.en."""
    apply_log_level(settings, settings.kind)
    metrics = ServiceMetrics(settings.kind)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        started = time.perf_counter()
        engine = confirmer or await asyncio.to_thread(load_confirmer, settings)
        load_ms = None if confirmer else round((time.perf_counter() - started) * 1000, 1)
        StreamingVad()  # load the ONNX session before the first client
        state = DetectorState(settings, engine, metrics, load_ms)
        app.state.detector = state
        try:
            async with serve_replica(settings, state.replica_info) as heartbeat:
                state.heartbeat = heartbeat
                yield
        finally:
            if state.scheduler:
                state.scheduler.close()

    app = FastAPI(title="VoiceMesh stt_tiny_ws", lifespan=lifespan)
    install_http_basics(app, metrics)
    guard_engine(app, settings.internal_token, metrics)
    app.include_router(router)
    return app


@router.get("/health")
async def health(state: Detector) -> JSONResponse:
    """Whether the detector serves, and how many sessions it holds."""
    settings = state.settings
    return JSONResponse(
        {
            "status": "ok",
            "service": settings.kind,
            "instance_id": settings.instance_id,
            "model_loaded": True,
            "vad": "silero",
            "confirm_model": settings.model if state.confirmer else None,
            "device": "cpu",
            "sessions": state.sessions,
            "registry": registry_status(state.heartbeat),
        }
    )


@router.websocket("/ws/detect")
async def detect(ws: WebSocket, state: Detector) -> None:
    """Score frames of one client stream until it stops or goes away."""
    await ws.accept()
    state.sessions += 1
    try:
        await DetectSession(ws, state).run()
    finally:
        state.sessions -= 1


class DetectSession:
    """One ``/ws/detect`` connection."""

    def __init__(self, ws: WebSocket, state: DetectorState) -> None:
        self.client = ClientSocket(ws)
        self.state = state
        s = state.settings
        self.decoder: AudioStreamDecoder = PcmStreamDecoder(max_frame_bytes=s.max_frame_bytes)
        self.vad = StreamingVad()
        self.endpointer = Endpointer(
            EndpointerConfig(
                threshold=s.threshold,
                neg_threshold=max(0.01, s.threshold - 0.15),
                min_speech_s=s.min_speech_s,
                min_silence_s=s.min_silence_s,
            )
        )
        self.samples = 0
        self._segment: list[np.ndarray] = []
        self._segment_start_sample = 0
        self._preroll: list[np.ndarray] = []
        self._confirmations: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Score frames until the client goes away or sends ``stop``."""
        async for item in self.client.receive(self._report_bad_message):
            if isinstance(item, bytes):
                await self._on_audio(item)
            elif isinstance(item, StartMessage):
                self.decoder = stream_decoder(
                    sample_rate=item.sample_rate,
                    encoding=item.encoding,
                    channels=item.channels,
                    max_frame_bytes=self.state.settings.max_frame_bytes,
                )
            elif isinstance(item, StopMessage):
                break
        if self._confirmations:
            await asyncio.gather(*self._confirmations, return_exceptions=True)

    async def _report_bad_message(self, exc: VoiceMeshError) -> None:
        """Bad control messages get the seed format's error; the socket stays open."""
        await self.client.send(DetectorError(error=exc.message, code=exc.code))

    async def _on_audio(self, frame: bytes) -> None:
        try:
            audio = self.decoder.decode(frame)
        except VoiceMeshError as exc:
            self.state.metrics.error(exc.code)
            await self.client.send(DetectorError(error=exc.message, code=exc.code))
            return
        if audio.size == 0:
            return
        self.samples += audio.size
        probs = self.vad.process(audio)
        was_speech = self.endpointer.in_speech
        events = self.endpointer.update(probs)
        self._keep_audio(audio, was_speech)
        if probs.size:
            p = float(probs.max())
            await self.client.send(
                DetectionMessage(
                    speech_detected=self.endpointer.in_speech
                    or p >= self.endpointer.config.threshold,
                    probability=round(p, 3),
                    t=round(self.samples / SAMPLE_RATE, 3),
                )
            )
        for event in events:
            if event.kind == "speech_start":
                await self.client.send(SpeechStartEvent(t=round(event.t, 3)))
            elif event.kind == "speech_end":
                segment = np.concatenate(self._segment) if self._segment else np.zeros(0)
                self._segment = []
                task = asyncio.create_task(
                    self._confirm(segment, event.speech_start, event.speech_end)
                )
                self._confirmations.add(task)
                task.add_done_callback(self._confirmations.discard)

    def _keep_audio(self, audio: np.ndarray, was_speech: bool) -> None:
        """Keep the current segment's audio (with a short pre-roll) for confirmation."""
        if self.endpointer.in_speech or was_speech:
            if not was_speech:
                self._segment = list(self._preroll)
            self._segment.append(audio)
            self._preroll = []
        else:
            self._preroll.append(audio)
            total = sum(a.size for a in self._preroll)
            while self._preroll and total - self._preroll[0].size > 0.3 * SAMPLE_RATE:
                total -= self._preroll.pop(0).size

    async def _confirm(self, segment: np.ndarray, start: float, end: float) -> None:
        """Decode the segment with tiny.en and send ``speech_end`` with the verdict."""
        text = ""
        confirmed = True
        scheduler = self.state.scheduler
        if scheduler is not None and segment.size:
            limit = int(self.state.settings.max_confirm_s * SAMPLE_RATE)
            started = time.perf_counter()
            result = await scheduler.decode(segment[-limit:], Priority.FINAL, language="en")
            self.state.metrics.observe("confirm", time.perf_counter() - started)
            text = result.text
            confirmed = bool(text.strip()) and not (
                result.no_speech_prob > 0.6 and result.avg_logprob < -1.0
            )
        await self.client.send(
            SpeechEndEvent(t=round(end, 3), start=round(start, 3), confirmed=confirmed, text=text)
        )
