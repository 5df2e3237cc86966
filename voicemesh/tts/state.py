"""What a TTS replica holds while it runs: the catalogue, loaded engines, load and metrics."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import Histogram

from voicemesh.errors import EngineUnavailable
from voicemesh.metrics import LATENCY_BUCKETS, ServiceMetrics
from voicemesh.registry import RegistryHeartbeat, ReplicaInfo, ReplicaLoad
from voicemesh.tts.admission import Admission
from voicemesh.tts.catalogue import ModelEntry, VoiceCatalogue, model_files
from voicemesh.tts.engine import Synthesizer
from voicemesh.tts.settings import TtsSettings

_LOGGER = logging.getLogger(__name__)

ENGINE_NAME = "sherpa-onnx"
_RTF_SMOOTHING = 0.2


def _smoothed(previous: float | None, value: float) -> float:
    """An exponential moving average's next value (the value itself when it is the first)."""
    return value if previous is None else previous + _RTF_SMOOTHING * (value - previous)


class TtsMetrics(ServiceMetrics):
    """The common metrics plus synthesis time, time to first chunk and characters per second."""

    def __init__(self, service: str) -> None:
        super().__init__(service)
        self.synthesis_time = Histogram(
            "voicemesh_tts_synthesis_seconds",
            "Wall time of a whole synthesis",
            ["voice"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_chunk = Histogram(
            "voicemesh_tts_first_chunk_seconds",
            "Time from request to the first audio chunk",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.chars_per_second = Histogram(
            "voicemesh_tts_chars_per_second",
            "Characters synthesised per second of wall time",
            buckets=(25, 50, 100, 200, 400, 800, 1600, 3200),
            registry=self.registry,
        )
        self.rtf = Histogram(
            "voicemesh_tts_rtf",
            "Real-time factor (synthesis time / audio duration)",
            buckets=(0.02, 0.05, 0.08, 0.1, 0.12, 0.15, 0.2, 0.3, 0.5, 1.0),
            registry=self.registry,
        )


class EngineSet:
    """One loaded engine per catalogue model, loaded on first use (thread-safe)."""

    def __init__(
        self,
        settings: TtsSettings,
        catalogue: VoiceCatalogue,
        espeak_data: Path | None,
        loaded: Mapping[str, Synthesizer] | None = None,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.espeak_data = espeak_data
        self.engines: dict[str, Synthesizer] = dict(loaded or {})
        self._lock = threading.Lock()

    def get(self, model: ModelEntry) -> Synthesizer:
        """The engine for ``model``, loading it now if needed."""
        engine = self.engines.get(model.id)
        if engine is not None:
            return engine
        with self._lock:
            engine = self.engines.get(model.id)
            if engine is None:
                engine = self._load(model)
                self.engines[model.id] = engine
        return engine

    def _load(self, model: ModelEntry) -> Synthesizer:
        from voicemesh.tts.piper_runtime import load_synthesizer

        files = model_files(model, self.catalogue.models_dir, self.espeak_data)
        if model.bundled:
            from voicemesh.tts.prepare import piper_model_files

            files = piper_model_files(files.model.parent, self.espeak_data or Path())
        if self.settings.duration_noise is not None:
            files = dataclasses.replace(files, noise_scale_w=self.settings.duration_noise)
        if self.settings.voice_noise is not None:
            files = dataclasses.replace(files, noise_scale=self.settings.voice_noise)
        return load_synthesizer(
            files,
            piper_runtime=self.settings.piper_runtime,
            language=model.language,
            num_threads=self.settings.num_threads,
            pool_size=self.settings.pool_size,
            solo_threads=self.settings.resolved_solo_threads(),
            decoder_int8=self.settings.decoder_int8,
        )


class TtsState:
    """What the app holds while it runs."""

    def __init__(
        self,
        settings: TtsSettings,
        catalogue: VoiceCatalogue,
        engines: EngineSet,
        metrics: TtsMetrics,
    ) -> None:
        self.settings = settings
        self.catalogue = catalogue
        self.engines = engines
        self.metrics = metrics
        self.admission = Admission(
            settings.max_concurrent, settings.max_queue, settings.queue_timeout_s
        )
        self.draining = False
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None
        self.recent_rtf: float | None = None
        self.voice_rtf: dict[str, float] = {}
        """Each voice's moving real-time factor over its recent requests on this replica."""
        self.samples: dict[str, dict[str, Any]] = {}

    def check_serving(self) -> None:
        """Refuse new work (503 draining) once the replica drains."""
        if self.draining:
            raise EngineUnavailable("this replica is draining; use another", code="draining")

    def mark_draining(self) -> None:
        """Take no new work from now on (health and registry say so)."""
        self.draining = True

    def note_rtf(self, rtf: float, voice_id: str | None = None) -> None:
        """Fold one request's real-time factor into the moving averages: the replica's (the
        registry shows it) and its voice's (``GET /v1/voices`` shows it)."""
        self.metrics.rtf.observe(rtf)
        self.recent_rtf = _smoothed(self.recent_rtf, rtf)
        if voice_id is not None:
            self.voice_rtf[voice_id] = round(_smoothed(self.voice_rtf.get(voice_id), rtf), 4)

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it."""
        s = self.settings
        return ReplicaInfo(
            instance_id=s.instance_id,
            kind=s.kind,
            url=s.public_url,
            device="cpu",
            model=s.default_voice,
            engine=ENGINE_NAME,
            capabilities=["synthesize", "stream", "compare", "voices"],
            load=ReplicaLoad(
                active_sessions=self.admission.active,
                queue=self.admission.waiting,
                rtf=self.recent_rtf,
                max_sessions=s.max_concurrent + s.max_queue,
            ),
            draining=self.draining,
            started_at=self.started_at,
            updated_at=time.time(),
        )


def prepare_bundled(catalogue: VoiceCatalogue) -> Path | None:
    """Prepare every bundled model the catalogue names; the espeak-ng data folder if any."""
    from voicemesh import assets
    from voicemesh.errors import ModelAssetError

    for model in catalogue.models.values():
        if model.bundled:
            try:
                assets.prepare_model(model.bundled, models_dir=catalogue.models_dir, progress=False)
            except ModelAssetError as exc:
                _LOGGER.warning("bundled model %s not prepared: %s", model.bundled, exc.message)
    try:
        from voicemesh.tts.prepare import espeak_data_dir

        return espeak_data_dir()
    except ModelAssetError:
        return None


def load_state(
    settings: TtsSettings, metrics: TtsMetrics, loaded: Mapping[str, Synthesizer] | None = None
) -> TtsState:
    """Prepare bundled voices, read the catalogue, load the default voice (and preloads).

    ``loaded``: engines already built, by catalogue model id (tests pass their own).
    """
    models_dir = settings.models_path
    catalogue = VoiceCatalogue.load(models_dir, settings.catalogue_file)
    espeak = prepare_bundled(catalogue)
    catalogue = VoiceCatalogue.load(models_dir, settings.catalogue_file)  # installed changed
    engines = EngineSet(settings, catalogue, espeak, loaded)
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
