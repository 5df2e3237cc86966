"""The service registry in Redis: replicas register with a TTL and keep it alive.

Each replica stores its :class:`ReplicaInfo` as JSON under
``{prefix}:replica:{kind}:{instance_id}`` with a TTL, and a
:class:`RegistryHeartbeat` rewrites it every few seconds with fresh load figures.
A replica that stops heartbeating expires with its TTL (gateways route around it
sooner: :meth:`gateway.registry_view.RegistryView.silent`). Each beat stamps the
process's memory, CPU and (on CUDA) GPU memory into the load (:mod:`voicemesh.usage`).
The STT routing mode lives under ``{prefix}:mode``, the mesh's default ASR model under
``{prefix}:default_asr_model``; ``{prefix}:config:generation`` counts the gateway
configuration reloads, and every gateway notes under
``{prefix}:config:applied:{instance_id}`` the one it applied.

Every Redis failure leaves this module as :class:`~voicemesh.errors.RegistryUnavailable`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Literal, get_args

from pydantic import BaseModel, Field, ValidationError
from redis.exceptions import RedisError

from voicemesh.errors import BadRequest, RegistryUnavailable
from voicemesh.redis_link import RedisLink
from voicemesh.tasks import stop_task
from voicemesh.usage import ProcessUsage

_LOGGER = logging.getLogger(__name__)

RoutingMode = Literal["gpu", "cpu", "auto"]
ModelStatus = Literal["loaded", "loading", "unloaded", "failed"]
ROUTING_MODES: tuple[str, ...] = get_args(RoutingMode)

_SCAN_BATCH = 200
_GLOB_SPECIAL = "\\*?[]"


class ReplicaLoad(BaseModel):
    """How busy a replica is right now."""

    active_sessions: int = 0
    """Open streaming sessions."""
    queue: int = 0
    """Requests waiting for the engine."""
    rtf: float | None = None
    """Recent real-time factor (processing time / audio time); None before any work."""
    latency_ms: float | None = None
    """Mean time of recent decodes from queued to done (ms); None before any work."""
    max_sessions: int | None = None
    """Session limit of the replica; None when unlimited."""
    cache_hit_rate: float | None = None
    """Share of lookups its result cache answered (services with a cache); None otherwise."""
    utilization: float | None = None
    """Share of the decode workers' time spent decoding lately (STT replicas)."""
    final_wait_s: float | None = None
    """How long finals wait for a decode worker lately, p90 (STT replicas)."""
    admitting: bool = True
    """False while the replica would refuse a new session for load (it says why)."""
    shed: dict[str, int] = {}
    """Work shed under load so far, by kind (partial_skipped, partial_stale, final_greedy)."""
    refused: dict[str, int] = {}
    """Sessions refused so far, by reason (final_wait, capacity, limit, draining)."""
    memory_mb: float | None = None
    """Resident memory of the replica's process (MB), stamped by its heartbeat."""
    cpu_percent: float | None = None
    """CPU the replica's process used since its last heartbeat (% of one core)."""
    gpu_memory_mb: float | None = None
    """GPU memory the driver charges to the replica's process (MB); None off CUDA."""


class AsrModel(BaseModel):
    """A speech-recognition model a replica holds loaded, and what it uses it for."""

    name: str
    """The model's name as the replica was configured (``base``, ``tiny.en``, a path)."""
    engine: str = ""
    """Engine library, e.g. ``faster-whisper``."""
    use: Literal["transcribe", "confirm"] = "transcribe"
    """``transcribe``: streams and files; ``confirm``: the detector's speech check only."""
    languages: list[str] = Field(default_factory=list)
    """Language codes the model decodes."""
    load_ms: float | None = None
    """How long its last load took; None when it was handed in."""
    status: ModelStatus = "loaded"
    """Whether it is in memory now: ``unloaded`` / ``loading`` / ``failed`` serve nothing."""
    error: str | None = None
    """Why the last load failed (``failed``); None otherwise."""


class ReplicaInfo(BaseModel):
    """One replica as the registry knows it."""

    instance_id: str
    """Unique id of the replica."""
    kind: str
    """Service name, e.g. ``stt_cpu_ws``."""
    url: str
    """Base URL, ``http://host:port``."""
    device: str = "cpu"
    """Device the engine runs on."""
    model: str = ""
    """Model the replica serves."""
    engine: str = ""
    """Engine library, e.g. ``faster-whisper``."""
    capabilities: list[str] = Field(default_factory=list)
    """What the replica can do, e.g. ``stream``, ``file``, ``detect``."""
    load: ReplicaLoad = Field(default_factory=ReplicaLoad)
    """Current load."""
    asr_models: list[AsrModel] = Field(default_factory=list)
    """Speech-recognition models loaded in the replica (none for TTS and older replicas)."""
    draining: bool = False
    """True while the replica finishes its sessions and takes no new ones."""
    healthy: bool = True
    """The replica's own view of its health."""
    started_at: float
    """Unix time the replica started."""
    updated_at: float
    """Unix time of the last write to the registry."""
    heartbeat_interval_s: float | None = None
    """How often the replica rewrites this entry (None: not said); see RegistryView.silent."""


def _glob_escape(text: str) -> str:
    return "".join(f"\\{char}" if char in _GLOB_SPECIAL else char for char in text)


class RegistryClient:
    """Async client for the replica registry and the routing mode in Redis."""

    def __init__(
        self,
        redis_url: str,
        *,
        prefix: str = "voicemesh",
        ttl_s: float = 10.0,
        timeout_s: float = 1.0,
    ) -> None:
        if ttl_s <= 0:
            raise ValueError(f"ttl_s must be positive, got {ttl_s}")
        self.redis_url = redis_url
        self.prefix = prefix
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._link = RedisLink("registry", redis_url, timeout_s=timeout_s)
        self._redis = self._link.redis
        self._call = self._link.call
        self.display_url = self._link.display_url
        """The Redis URL without its password, for messages and logs."""

    def replica_key(self, kind: str, instance_id: str) -> str:
        """The Redis key holding one replica."""
        return f"{self.prefix}:replica:{kind}:{instance_id}"

    @property
    def mode_key(self) -> str:
        """The Redis key holding the STT routing mode."""
        return f"{self.prefix}:mode"

    @property
    def default_model_key(self) -> str:
        """The Redis key holding the ASR model used when a request names none."""
        return f"{self.prefix}:default_asr_model"

    async def get_default_model(self) -> str | None:
        """The mesh's default ASR model, or None when the admin has set none."""
        value = await self._call(
            "read of the default model", self._redis.get(self.default_model_key)
        )
        return str(value) if value else None

    async def set_default_model(self, model: str) -> None:
        """Store the mesh's default ASR model (every gateway replica follows it)."""
        await self._call(
            "write of the default model", self._redis.set(self.default_model_key, model)
        )

    async def _store(self, info: ReplicaInfo) -> ReplicaInfo:
        stamped = info.model_copy(update={"updated_at": time.time()})
        await self._call(
            f"write of {info.kind}/{info.instance_id}",
            self._redis.set(
                self.replica_key(info.kind, info.instance_id),
                stamped.model_dump_json(),
                px=max(1, round(self.ttl_s * 1000)),
            ),
        )
        return stamped

    async def register(self, info: ReplicaInfo) -> ReplicaInfo:
        """Store a replica with the TTL; returns what was stored (``updated_at`` set to now)."""
        stored = await self._store(info)
        _LOGGER.info("registered %s %s at %s", info.kind, info.instance_id, info.url)
        return stored

    async def heartbeat(self, info: ReplicaInfo) -> ReplicaInfo:
        """Rewrite a replica with fresh load and a new TTL (re-creates it if it expired)."""
        return await self._store(info)

    async def deregister(self, kind: str, instance_id: str) -> None:
        """Remove a replica now instead of waiting for its TTL."""
        await self._call(
            f"removal of {kind}/{instance_id}",
            self._redis.delete(self.replica_key(kind, instance_id)),
        )
        _LOGGER.info("deregistered %s %s", kind, instance_id)

    async def snapshot(self, kind: str | None = None) -> list[ReplicaInfo]:
        """Every live replica (of one kind, or all), sorted by kind and instance id."""
        pattern = f"{_glob_escape(self.prefix)}:replica:"
        pattern += f"{_glob_escape(kind)}:*" if kind is not None else "*"

        async def read() -> list[str | bytes | None]:
            keys = [key async for key in self._redis.scan_iter(match=pattern, count=_SCAN_BATCH)]
            if not keys:
                return []
            # A key can expire between SCAN and MGET; it then reads as None.
            return list(await self._redis.mget(keys))

        values = await self._call("snapshot", read())
        replicas: list[ReplicaInfo] = []
        for value in values:
            if value is None:
                continue
            try:
                replica = ReplicaInfo.model_validate_json(value)
            except ValidationError as exc:
                _LOGGER.warning("skipping malformed registry entry: %s", exc)
                continue
            if kind is None or replica.kind == kind:
                replicas.append(replica)
        replicas.sort(key=lambda replica: (replica.kind, replica.instance_id))
        return replicas

    async def ping(self) -> bool:
        """True when Redis answers; never raises."""
        try:
            return bool(await self._call("ping", self._redis.ping()))
        except RegistryUnavailable:
            return False

    async def get_mode(self, default: str) -> str:
        """The STT routing mode, or ``default`` when unset or not a known mode."""
        value = await self._call("read of the mode", self._redis.get(self.mode_key))
        if value in ROUTING_MODES:
            return str(value)
        if value is not None:
            _LOGGER.warning("ignoring unknown routing mode %r in Redis", value)
        return default

    async def set_mode(self, mode: str) -> None:
        """Store the STT routing mode (``gpu``, ``cpu`` or ``auto``)."""
        if mode not in ROUTING_MODES:
            raise BadRequest(
                f"mode must be one of {', '.join(ROUTING_MODES)}, got {mode!r}", code="bad_mode"
            )
        await self._call("write of the mode", self._redis.set(self.mode_key, mode))

    @property
    def config_generation_key(self) -> str:
        """The Redis key counting gateway configuration reloads."""
        return f"{self.prefix}:config:generation"

    def config_applied_key(self, instance_id: str) -> str:
        """The Redis key where one gateway notes the reload generation it applied."""
        return f"{self.prefix}:config:applied:{instance_id}"

    async def get_config_generation(self) -> int:
        """How many configuration reloads were asked for (0 before the first)."""
        value = await self._call(
            "read of the config generation", self._redis.get(self.config_generation_key)
        )
        try:
            return int(value) if value is not None else 0
        except ValueError:
            _LOGGER.warning("ignoring a config generation that is not a number: %r", value)
            return 0

    async def bump_config_generation(self) -> int:
        """Ask every gateway to reload its configuration; returns the new generation."""
        value = await self._call(
            "write of the config generation", self._redis.incr(self.config_generation_key)
        )
        return int(value)

    async def mark_config_applied(self, instance_id: str, generation: int) -> None:
        """Note that a gateway runs with reload ``generation`` (kept for one TTL)."""
        await self._call(
            "write of an applied config generation",
            self._redis.set(
                self.config_applied_key(instance_id),
                str(generation),
                px=max(1, round(self.ttl_s * 1000)),
            ),
        )

    async def config_applied(self) -> dict[str, int]:
        """The reload generation each live gateway applied, by instance id."""
        prefix = self.config_applied_key("")

        async def read() -> dict[str, int]:
            keys = [
                key
                async for key in self._redis.scan_iter(
                    match=f"{_glob_escape(prefix)}*", count=_SCAN_BATCH
                )
            ]
            values = list(await self._redis.mget(keys)) if keys else []
            return {
                str(key)[len(prefix) :]: int(value)
                for key, value in zip(keys, values, strict=True)
                if value is not None and str(value).isdigit()
            }

        return await self._call("read of the applied config generations", read())

    async def close(self) -> None:
        """Close the connection pool."""
        with contextlib.suppress(RedisError, OSError):
            await self._redis.aclose()


class RegistryHeartbeat:
    """Keeps one replica registered for the lifetime of a service, through Redis outages."""

    def __init__(
        self,
        client: RegistryClient,
        info: Callable[[], ReplicaInfo],
        interval_s: float = 2.0,
        usage: ProcessUsage | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.client = client
        self.info = info
        self.interval_s = interval_s
        self.connected = False
        """True while the last write reached Redis."""
        self.last_error: str | None = None
        """Why the last write failed; None after a success."""
        self._task: asyncio.Task[None] | None = None
        self._last: ReplicaInfo | None = None
        self.usage = usage or ProcessUsage()
        """Samples the process's memory, CPU and GPU memory for each beat."""

    async def start(self) -> None:
        """Register now (a failure is logged, not raised) and keep refreshing in the background."""
        if self._task is not None:
            return
        await self._beat()
        self._task = asyncio.create_task(self._run(), name="voicemesh-registry-heartbeat")

    async def stop(self, deregister: bool = True) -> None:
        """Stop refreshing and, by default, remove the registration."""
        task, self._task = self._task, None
        await stop_task(task)
        if deregister and self._last is not None:
            try:
                await self.client.deregister(self._last.kind, self._last.instance_id)
            except RegistryUnavailable as exc:
                _LOGGER.warning("could not deregister %s: %s", self._last.instance_id, exc)

    async def beat_now(self) -> None:
        """Publish the current info at once (e.g. draining), without waiting a period."""
        await self._beat()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            await self._beat()

    async def stamp_usage(self, info: ReplicaInfo) -> ReplicaInfo:
        """``info`` with the process's memory, CPU and GPU memory (in a thread: on CUDA,
        reading GPU memory runs ``nvidia-smi``) in its load."""
        try:
            sample = await asyncio.to_thread(self.usage.sample, info.device)
        except Exception:  # never let a usage reading stop the registration
            _LOGGER.exception("process usage sample failed; registering without it")
            return info
        load = info.load.model_copy(
            update={
                "memory_mb": sample.memory_mb,
                "cpu_percent": sample.cpu_percent,
                "gpu_memory_mb": sample.gpu_memory_mb,
            }
        )
        return info.model_copy(update={"load": load})

    async def _beat(self) -> None:
        try:
            info = self.info()
        except Exception:
            _LOGGER.exception("replica info callback failed; registration not refreshed")
            return
        info = await self.stamp_usage(info)
        self._last = info = info.model_copy(update={"heartbeat_interval_s": self.interval_s})
        try:
            if self.connected:
                await self.client.heartbeat(info)
            else:
                # First write, or the first after an outage (Redis may have lost the key).
                await self.client.register(info)
        except RegistryUnavailable as exc:
            if self.connected or self.last_error is None:
                _LOGGER.warning(
                    "registry unreachable, %s keeps retrying every %.1f s: %s",
                    info.instance_id,
                    self.interval_s,
                    exc.message,
                )
            self.connected = False
            self.last_error = exc.message
            return
        if self.last_error is not None:
            _LOGGER.info("registry reachable again; %s re-registered", info.instance_id)
        self.connected = True
        self.last_error = None
