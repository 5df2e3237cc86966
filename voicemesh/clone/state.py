"""What a cloning replica holds while it runs: profiles, cache, engines, backends, registry."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import httpx
import numpy as np
from prometheus_client import Gauge
from redis.asyncio import Redis

from voicemesh.clone.cache import ResultCache
from voicemesh.clone.engines import VoiceCloner, WorldAdaptedVits
from voicemesh.clone.gptsovits import GptSovitsCloner, probe_gptsovits
from voicemesh.clone.profiles import ProfileStore, wav_bytes
from voicemesh.clone.settings import CloneSettings
from voicemesh.errors import EngineUnavailable, RegistryUnavailable
from voicemesh.internal_token import internal_headers
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.registry import RegistryClient, RegistryHeartbeat, ReplicaInfo, ReplicaLoad

_LOGGER = logging.getLogger(__name__)


def load_cpu_engine(settings: CloneSettings) -> WorldAdaptedVits:
    """The WORLD-adapted VITS engine on the shared TTS engine's stock voice."""
    from voicemesh.clone.vits import load_base_voice

    return WorldAdaptedVits(load_base_voice(settings.vits_voice), settings.vits_voice)


def engine_order(
    gpt: VoiceCloner | None, cpu: VoiceCloner | None, *, fallback: bool
) -> list[VoiceCloner]:
    """Engines a request tries, in order: GPT-SoVITS when a backend is known, then the CPU
    engine (as the fallback when ``fallback`` is on, alone when there is no backend)."""
    order: list[VoiceCloner] = [gpt] if gpt is not None else []
    if cpu is not None and (fallback or not order):
        order.append(cpu)
    return order


class CloneState:
    """What the app holds while it runs."""

    def __init__(
        self,
        settings: CloneSettings,
        redis: Redis,
        metrics: ServiceMetrics,
        cpu: WorldAdaptedVits | None,
    ) -> None:
        self.settings = settings
        self.redis = redis
        self.metrics = metrics
        self.store = ProfileStore(redis, settings.voices_path, settings.key_prefix)
        self.cache = ResultCache(
            redis,
            settings.cache_path,
            max_bytes=settings.cache_max_bytes,
            prefix=settings.key_prefix,
        )
        # The registry is the mesh's own (default prefix): STT replicas and backends live there.
        self.registry = RegistryClient(
            str(settings.resolved_redis_url()), ttl_s=settings.registry_ttl_s
        )
        self.backend_urls: list[str] = []
        self.gpt = GptSovitsCloner(
            lambda: list(self.backend_urls),
            model_version=settings.gptsovits_model_version,
            backend_voices_dir=settings.gptsovits_voices_dir or str(settings.voices_path),
            timeout_s=settings.gptsovits_timeout_s,
            connect_timeout_s=settings.gptsovits_connect_timeout_s,
            queue_timeout_s=settings.gptsovits_queue_timeout_s,
        )
        self.cpu = cpu
        self._measuring: set[asyncio.Task[object]] = set()
        self.started_at = time.time()
        self.heartbeat: RegistryHeartbeat | None = None
        self.active = 0
        self.fallbacks = 0
        self.hit_ratio = Gauge(
            "voicemesh_clone_cache_hit_ratio",
            "Cache hits over lookups on this replica",
            ["service"],
            registry=metrics.registry,
        )

    def measure_speaker(self, digest: str) -> None:
        """Measure a new reference's speaker for the CPU engine in the background (and keep
        it beside the reference), so its first synthesis, on any replica, skips Harvest."""
        if self.cpu is None:
            return
        path = self.store.audio_path(digest)
        task = asyncio.create_task(asyncio.to_thread(self.cpu.speaker, path, digest))
        self._measuring.add(task)
        task.add_done_callback(self._measured)

    def _measured(self, task: asyncio.Task[object]) -> None:
        self._measuring.discard(task)
        if not task.cancelled() and task.exception() is not None:
            _LOGGER.warning("could not measure a reference's speaker: %s", task.exception())

    def engines(self) -> list[VoiceCloner]:
        """Engines to try, in order (see :func:`engine_order`)."""
        return engine_order(
            self.gpt if self.backend_urls else None, self.cpu, fallback=self.settings.fallback
        )

    def replica_info(self) -> ReplicaInfo:
        """This replica as the registry shows it (with the cache hit rate)."""
        s = self.settings
        names = [e.name for e in self.engines()]
        return ReplicaInfo(
            instance_id=s.instance_id,
            kind=s.kind,
            url=s.public_url,
            device="cpu",
            model=s.vits_voice if not self.backend_urls else s.gptsovits_model_version,
            engine="+".join(names) or "none",
            capabilities=["clone", "synthesize", "stream"],
            load=ReplicaLoad(
                active_sessions=self.active,
                queue=self.gpt.queue.depth(),
                cache_hit_rate=self.cache.hit_rate,
            ),
            started_at=self.started_at,
            updated_at=time.time(),
        )

    async def refresh_backends(self, client: httpx.AsyncClient) -> None:
        """Register the configured GPT-SoVITS backends that answer, then read all registered."""
        s = self.settings
        for url in (u.rstrip("/") for u in s.gptsovits_urls):
            if not self.gpt.queue.busy(url) and not await probe_gptsovits(client, url):
                continue
            now = time.time()
            # Named by the URL, so every tts_clone replica refreshes the same entry.
            digest = hashlib.sha256(url.encode()).hexdigest()[:12]
            info = ReplicaInfo(
                instance_id=f"{s.gptsovits_kind}-{digest}",
                kind=s.gptsovits_kind,
                url=url,
                engine="gpt-sovits",
                model=s.gptsovits_model_version,
                capabilities=["clone"],
                started_at=now,
                updated_at=now,
            )
            with contextlib.suppress(RegistryUnavailable):
                await self.registry.heartbeat(info)
        try:
            replicas = await self.registry.snapshot(s.gptsovits_kind)
        except RegistryUnavailable as exc:
            _LOGGER.warning("cannot read GPT-SoVITS backends from the registry: %s", exc.message)
            return
        self.backend_urls = [r.url for r in replicas if r.healthy and not r.draining]

    async def stt_urls(self) -> list[str]:
        """STT replicas that can transcribe a reference, registered ones first."""
        urls: list[str] = []
        for kind in self.settings.stt_kinds:
            try:
                replicas = await self.registry.snapshot(kind)
            except RegistryUnavailable:
                continue
            urls += [r.url for r in replicas if r.healthy and not r.draining]
        return urls + [u.rstrip("/") for u in self.settings.stt_urls]


async def transcribe_reference(
    state: CloneState, audio_16k: np.ndarray, language: str, request_id: str
) -> str:
    """What the reference says, from the first STT replica that answers."""
    urls = await state.stt_urls()
    if not urls:
        raise EngineUnavailable(
            "prompt_text is missing and no STT service is registered to transcribe the reference",
            code="no_stt_backend",
        )
    data = wav_bytes(audio_16k, SAMPLE_RATE)
    last = ""
    async with httpx.AsyncClient(timeout=state.settings.stt_timeout_s) as client:
        for url in urls:
            try:
                response = await client.post(
                    f"{url}/v1/transcribe",
                    files={"file": ("reference.wav", data, "audio/wav")},
                    data={"language": language, "response_format": "json"},
                    headers={
                        "X-Request-ID": request_id,
                        **internal_headers(state.settings.internal_token),
                    },
                )
            except httpx.HTTPError as exc:
                last = f"{url}: {exc!r}"
                continue
            if response.status_code == 200:
                return str(response.json().get("text", "")).strip()
            last = f"{url} answered {response.status_code}"
            if response.status_code < 500:
                break
    raise EngineUnavailable(
        f"could not transcribe the reference: {last}", code="transcription_failed"
    )


async def refresh_backends_forever(state: CloneState, client: httpx.AsyncClient) -> None:
    """Refresh the GPT-SoVITS backends and the cache gauge every ``backend_refresh_s``."""
    while True:
        await asyncio.sleep(state.settings.backend_refresh_s)
        try:
            await state.refresh_backends(client)
        except Exception:
            _LOGGER.exception("refreshing GPT-SoVITS backends failed")
        state.hit_ratio.labels(state.settings.kind).set(state.cache.hit_rate or 0.0)
