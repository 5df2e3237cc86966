"""Where benchmark runs are kept: Redis (every gateway replica reads them) or memory.

A run is one :class:`BenchmarkRun` record, rewritten as it goes. In Redis (under the
registry's prefix) each run is a JSON string ``{prefix}:benchmark:run:{id}`` with a
TTL, a sorted set ``{prefix}:benchmark:runs`` orders them by start time and keeps the
newest ``keep`` (older ones are deleted), and ``{prefix}:benchmark:lock`` holds the id
of the run under way, with an expiry its runner keeps pushing back: one run at a time
across the mesh, and a lock whose gateway died lapses by itself. Without Redis the same
lives in this replica's memory (``store: memory`` in every answer).

Every Redis failure leaves this module as :class:`~voicemesh.errors.RegistryUnavailable`.
"""

from __future__ import annotations

import time
from typing import Any, Literal, Protocol

from pydantic import BaseModel, Field

from voicemesh.redis_link import RedisLink

BenchmarkKind = Literal["stt", "tts", "both"]
RunStatus = Literal["queued", "running", "completed", "failed"]
UNFINISHED: frozenset[str] = frozenset({"queued", "running"})


class Progress(BaseModel):
    """Requests of a run done (answered or failed) out of all it makes."""

    done: int = 0
    total: int = 0


class BenchmarkRun(BaseModel):
    """One benchmark run: what was asked, how far it got, and its rows and summary."""

    id: str
    status: RunStatus = "queued"
    kind: BenchmarkKind
    clients: int
    clips: int
    real_time: bool
    gateway: str
    """The instance id of the gateway replica that runs it."""
    started_at: float
    finished_at: float | None = None
    heartbeat_at: float
    """When its runner last said it was alive; a run unheard of for the stale time failed."""
    estimated_s: float
    """How long the run should take (what a refused second start is told to wait)."""
    progress: Progress = Field(default_factory=Progress)
    stt: list[dict[str, Any]] = Field(default_factory=list)
    tts: list[dict[str, Any]] = Field(default_factory=list)
    errors: list[dict[str, Any]] = Field(default_factory=list)
    """Every request that failed: which one, and the error's code and message."""
    summary: dict[str, Any] | None = None
    error: dict[str, str] | None = None
    """Why the run as a whole failed (``runner_stopped``), when it did."""

    def as_seen(self, now: float, stale_s: float) -> BenchmarkRun:
        """The run as a reader should see it: ``failed`` when its runner went silent."""
        if self.status not in UNFINISHED or now - self.heartbeat_at <= stale_s:
            return self
        silent = round(now - self.heartbeat_at)
        return self.model_copy(
            update={
                "status": "failed",
                "error": {
                    "code": "runner_stopped",
                    "message": f"runner stopped: no heartbeat for {silent} s "
                    f"(gateway {self.gateway} died or was stopped)",
                },
            }
        )

    def listing(self) -> dict[str, Any]:
        """The run's line in ``GET /v1/benchmark/results``."""
        return self.model_dump(
            include={"id", "status", "kind", "started_at", "finished_at", "progress"}
        )


class RunStore(Protocol):
    """Keeps runs and the one-run-at-a-time lock."""

    name: str
    """``redis`` or ``memory`` (said in every answer)."""

    async def save(self, run: BenchmarkRun) -> None:
        """Write (or rewrite) a run."""
        ...

    async def get(self, run_id: str) -> BenchmarkRun | None:
        """The run with this id, or None."""
        ...

    async def recent(self) -> list[BenchmarkRun]:
        """The kept runs, newest first."""
        ...

    async def acquire(self, run_id: str, hold_s: float) -> str | None:
        """Take the lock for ``run_id`` for ``hold_s``; the holder's id if another has it."""
        ...

    async def renew(self, run_id: str, hold_s: float) -> None:
        """Keep holding the lock for another ``hold_s`` (while it is ``run_id``'s)."""
        ...

    async def release(self, run_id: str) -> None:
        """Give the lock up (when it is ``run_id``'s)."""
        ...

    async def close(self) -> None:
        """Let go of connections."""
        ...


class MemoryRunStore:
    """Runs in this replica's memory (Redis disabled): the newest ``keep`` of them."""

    name = "memory"

    def __init__(self, keep: int, ttl_s: float) -> None:
        self.keep = keep
        self.ttl_s = ttl_s
        self._runs: dict[str, BenchmarkRun] = {}
        self._lock: tuple[str, float] | None = None

    async def save(self, run: BenchmarkRun) -> None:
        """Write a run; drop the oldest past ``keep`` and those older than the TTL."""
        self._runs[run.id] = run.model_copy(deep=True)
        cutoff = time.time() - self.ttl_s
        ordered = sorted(self._runs.values(), key=lambda r: r.started_at, reverse=True)
        for old in ordered[self.keep :] + [r for r in ordered if r.started_at < cutoff]:
            self._runs.pop(old.id, None)

    async def get(self, run_id: str) -> BenchmarkRun | None:
        """The run with this id, or None."""
        run = self._runs.get(run_id)
        return None if run is None else run.model_copy(deep=True)

    async def recent(self) -> list[BenchmarkRun]:
        """The kept runs, newest first."""
        ordered = sorted(self._runs.values(), key=lambda r: r.started_at, reverse=True)
        return [r.model_copy(deep=True) for r in ordered]

    async def acquire(self, run_id: str, hold_s: float) -> str | None:
        """Take the lock unless another run holds it and its hold has not lapsed."""
        now = time.monotonic()
        if self._lock is not None and self._lock[0] != run_id and self._lock[1] > now:
            return self._lock[0]
        self._lock = (run_id, now + hold_s)
        return None

    async def renew(self, run_id: str, hold_s: float) -> None:
        """Push the lock's lapse back while it is ``run_id``'s."""
        if self._lock is not None and self._lock[0] == run_id:
            self._lock = (run_id, time.monotonic() + hold_s)

    async def release(self, run_id: str) -> None:
        """Give the lock up when it is ``run_id``'s."""
        if self._lock is not None and self._lock[0] == run_id:
            self._lock = None

    async def close(self) -> None:
        """Nothing to let go of."""


class RedisRunStore:
    """Runs in Redis under the registry's prefix, readable from every gateway replica."""

    name = "redis"

    def __init__(
        self, redis_url: str, *, prefix: str, keep: int, ttl_s: float, timeout_s: float = 1.0
    ) -> None:
        self.prefix = f"{prefix}:benchmark"
        self.keep = keep
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self._link = RedisLink("benchmark store", redis_url, timeout_s=timeout_s)
        self._redis = self._link.redis
        self._call = self._link.call
        self.display_url = self._link.display_url

    def run_key(self, run_id: str) -> str:
        """The key holding one run."""
        return f"{self.prefix}:run:{run_id}"

    @property
    def index_key(self) -> str:
        """The sorted set of run ids by start time."""
        return f"{self.prefix}:runs"

    @property
    def lock_key(self) -> str:
        """The key naming the run under way."""
        return f"{self.prefix}:lock"

    async def save(self, run: BenchmarkRun) -> None:
        """Write a run with the TTL; index it and drop runs past the newest ``keep``."""
        ttl_ms = int(self.ttl_s * 1000)
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.set(self.run_key(run.id), run.model_dump_json(), px=ttl_ms)
            pipe.zadd(self.index_key, {run.id: run.started_at})
            pipe.zrange(self.index_key, 0, -(self.keep + 1))
            pipe.pexpire(self.index_key, ttl_ms)
            results = await self._call("write of a benchmark run", pipe.execute())
        dropped: list[str] = results[2]
        if dropped:
            await self._call(
                "drop of old benchmark runs",
                self._redis.delete(*(self.run_key(d) for d in dropped)),
            )
            await self._call(
                "drop of old benchmark runs", self._redis.zrem(self.index_key, *dropped)
            )

    async def get(self, run_id: str) -> BenchmarkRun | None:
        """The run with this id, or None (never made, expired or dropped)."""
        raw = await self._call("read of a benchmark run", self._redis.get(self.run_key(run_id)))
        return None if raw is None else BenchmarkRun.model_validate_json(raw)

    async def recent(self) -> list[BenchmarkRun]:
        """The kept runs, newest first (ids whose run expired are skipped)."""
        found = await self._call(
            "read of the benchmark runs", self._redis.zrevrange(self.index_key, 0, self.keep - 1)
        )
        ids = [str(i) for i in found]
        if not ids:
            return []
        raws = await self._call(
            "read of the benchmark runs", self._redis.mget([self.run_key(i) for i in ids])
        )
        return [BenchmarkRun.model_validate_json(raw) for raw in raws if raw is not None]

    async def acquire(self, run_id: str, hold_s: float) -> str | None:
        """Take the mesh-wide lock (SET NX with an expiry); the holder's id if taken."""
        taken = await self._call(
            "take of the benchmark lock",
            self._redis.set(self.lock_key, run_id, nx=True, px=int(hold_s * 1000)),
        )
        if taken:
            return None
        holder = await self._call("read of the benchmark lock", self._redis.get(self.lock_key))
        if holder is None:  # lapsed between the two calls: try once more
            return await self.acquire(run_id, hold_s)
        return str(holder)

    async def renew(self, run_id: str, hold_s: float) -> None:
        """Push the lock's expiry back while it is ``run_id``'s."""
        holder = await self._call("read of the benchmark lock", self._redis.get(self.lock_key))
        if holder == run_id:
            await self._call(
                "renewal of the benchmark lock",
                self._redis.pexpire(self.lock_key, int(hold_s * 1000)),
            )

    async def release(self, run_id: str) -> None:
        """Delete the lock when it is ``run_id``'s."""
        holder = await self._call("read of the benchmark lock", self._redis.get(self.lock_key))
        if holder == run_id:
            await self._call("release of the benchmark lock", self._redis.delete(self.lock_key))

    async def close(self) -> None:
        """Close the connection pool."""
        await self._redis.aclose()
