"""What a running STT replica holds: its settings, engine, scheduler, sessions."""

from __future__ import annotations

import time

from voicemesh.metrics import ServiceMetrics
from voicemesh.registry import AsrModel, RegistryHeartbeat, ReplicaInfo, ReplicaLoad
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
        self.transcriber = transcriber
        self.model_load_ms = model_load_ms
        """How long the lifespan took to load the model; None when it was handed in."""
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
        meter = self.scheduler.meter
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
                utilization=round(meter.utilization(), 3),
                final_wait_s=round(meter.final_wait_s(), 3),
                admitting=meter.refusal(len(self.sessions)) is None,
                shed=dict(meter.shed),
                refused=dict(meter.refused),
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
