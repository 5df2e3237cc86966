"""What a running STT replica holds: its settings, engine, scheduler, sessions.

The engine can be unloaded and loaded again while the replica runs
(:mod:`voicemesh.stt.model_admin`): ``model_status`` says where it is, the registry
shows it, and :attr:`SttState.transcriber` raises
:class:`~voicemesh.errors.ModelUnloaded` while there is none.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from voicemesh.errors import ModelUnloaded
from voicemesh.metrics import ServiceMetrics
from voicemesh.registry import (
    AsrModel,
    ModelStatus,
    RegistryHeartbeat,
    ReplicaInfo,
    ReplicaLoad,
)
from voicemesh.stt.scheduler import DecodeScheduler
from voicemesh.stt.script import result_postprocessor
from voicemesh.stt.settings import SttSettings
from voicemesh.stt.streaming import StreamingSession
from voicemesh.stt.streaming_rules import EngineLabel
from voicemesh.stt.types import Transcriber


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
        self._transcriber: Transcriber | None = transcriber
        self.engine_name = transcriber.engine
        self.device = transcriber.device
        self.languages = sorted(getattr(transcriber, "languages", None) or ())
        self.model_status: ModelStatus = "loaded"
        self.model_error: str | None = None
        """Why the last load failed (status ``failed``)."""
        self.model_load_ms = model_load_ms
        """How long the last load of the model took; None when it was handed in."""
        self.loader: Callable[[], Transcriber] | None = None
        """Loads the model again after an unload (set by the app)."""
        self.load_task: asyncio.Task[None] | None = None
        """The background load after ``POST /v1/model/load``, while it runs."""
        self.enders: dict[str, Callable[[], Awaitable[None]]] = {}
        """Per open session: ends it with ``model_unloaded`` (a forced unload)."""
        self.scheduler = DecodeScheduler(
            transcriber,
            workers=settings.workers,
            postprocess=result_postprocessor(settings.chinese_script),
            policy=settings.admission_policy(),
            batch_max=settings.batch_max,
            batch_wait_s=settings.batch_wait_s,
        )
        self.metrics = metrics
        self.scheduler.meter.on_shed = lambda kind: metrics.count("shed", kind)
        self.sessions: dict[str, StreamingSession] = {}
        self.draining = False
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None

    @property
    def transcriber(self) -> Transcriber:
        """The loaded engine; :class:`ModelUnloaded` (503) while there is none."""
        if self._transcriber is None:
            raise ModelUnloaded(self.not_loaded_message())
        return self._transcriber

    def not_loaded_message(self) -> str:
        """Why this replica cannot decode now (its model is not loaded)."""
        s = self.settings
        failed = f"; its last load failed: {self.model_error}" if self.model_error else ""
        return (
            f"model {s.model!r} is not loaded on replica {s.instance_id} "
            f"(status {self.model_status}){failed}; use another replica"
        )

    def set_engine(self, transcriber: Transcriber | None, status: ModelStatus) -> None:
        """Hold ``transcriber`` (None drops the engine, so its memory can be freed)."""
        self._transcriber = transcriber
        self.scheduler.transcriber = transcriber
        self.model_status = status
        if transcriber is not None:
            self.engine_name, self.device = transcriber.engine, transcriber.device
            self.model_error = None

    def mark_draining(self) -> None:
        """Take no new sessions from now on (health and registry say so)."""
        self.draining = True

    @property
    def label(self) -> EngineLabel:
        """Engine, device and model as finals report them."""
        return EngineLabel(
            engine=self.engine_name,
            device=self.device,
            model=self.settings.model,
            backend=self.settings.instance_id,
        )

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it."""
        s = self.settings
        meter = self.scheduler.meter
        return ReplicaInfo(
            instance_id=s.instance_id,
            kind=s.kind,
            url=s.public_url,
            device=self.device,
            model=s.model,
            engine=self.engine_name,
            capabilities=["transcribe", "stream", "partials"],
            load=ReplicaLoad(
                active_sessions=len(self.sessions),
                queue=self.scheduler.queue_depth + self.scheduler.busy,
                rtf=self.scheduler.recent_rtf,
                latency_ms=self.scheduler.recent_latency_ms,
                max_sessions=s.max_sessions,
                utilization=round(meter.utilization(), 3),
                final_wait_s=round(meter.final_wait_s(), 3),
                admitting=meter.refusal(len(self.sessions)) is None,
                shed=dict(meter.shed),
                refused=dict(meter.refused),
            ),
            asr_models=[
                AsrModel(
                    name=s.model,
                    engine=self.engine_name,
                    use="transcribe",
                    languages=self.languages,
                    load_ms=self.model_load_ms,
                    status=self.model_status,
                    error=self.model_error,
                )
            ],
            draining=self.draining,
            started_at=self.started_at,
            updated_at=time.time(),
        )
