"""The gateway's view of the registry: a snapshot refreshed in the background.

Routing reads the last snapshot, never Redis directly, so a Redis outage does not
stall sessions: the gateway keeps serving from what it saw last and its default
mode, reports ``degraded`` in ``/health``, and picks up again when Redis returns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import httpx

from voicemesh.errors import RegistryUnavailable
from voicemesh.registry import RegistryClient, ReplicaInfo
from voicemesh.tasks import stop_task

_LOGGER = logging.getLogger(__name__)

PROBE_MISSES = 2
STALE_BEATS = 3
"""Heartbeats a replica may miss before routing takes it for hung (tried last, not first)."""


def static_replicas(kind: str, urls: list[str], capabilities: list[str]) -> list[ReplicaInfo]:
    """Replicas configured by URL (no Redis), e.g. for a fixed deployment."""
    now = time.time()
    return [
        ReplicaInfo(
            instance_id=f"static-{kind}-{i}",
            kind=kind,
            url=url.rstrip("/"),
            capabilities=capabilities,
            started_at=now,
            updated_at=now,
        )
        for i, url in enumerate(urls)
    ]


class RegistryView:
    """Last known replicas and routing mode, refreshed every ``refresh_s``."""

    def __init__(
        self,
        client: RegistryClient | None,
        *,
        default_mode: str,
        refresh_s: float = 1.0,
        static: list[ReplicaInfo] | None = None,
        probe_interval_s: float = 0.0,
        failed_hold_s: float = 5.0,
        engine_headers: dict[str, str] | None = None,
    ) -> None:
        self.client = client
        self.engine_headers = dict(engine_headers or {})
        """Headers every connection to an engine carries: the internal token, when set."""
        self.default_mode = default_mode
        self.refresh_s = refresh_s
        self.static = static or []
        self.replicas: list[ReplicaInfo] = []
        self.mode = default_mode
        self.default_model: str | None = None
        """The ASR model a request that names none prefers (the admin's choice)."""
        self.connected = False
        self.last_error: str | None = None
        self.refreshed_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._failed: dict[str, float] = {}
        self._beats: dict[str, tuple[float, float]] = {}
        """Per replica: its last ``updated_at`` and when (this clock) it was first seen."""
        self._silent: set[str] = set()
        self._assigned: dict[str, int] = {}
        self._mode_epoch = 0
        self.probe_interval_s = probe_interval_s
        self._probe_task: asyncio.Task[None] | None = None
        self._probe_misses: dict[str, int] = {}
        self.failed_hold_s = failed_hold_s

    @property
    def degraded(self) -> bool:
        """True when Redis is configured but the last refresh failed."""
        return self.client is not None and not self.connected

    def snapshot(self, *, include_held: bool = False) -> list[ReplicaInfo]:
        """Registered replicas (or the static ones when none), minus recent failures.

        A replica's reported load lags by up to a heartbeat, so sessions this gateway
        opened since count too: a burst of new sessions spreads instead of piling onto
        the replica that looked idle a second ago. ``include_held`` keeps the replicas
        that failed a probe or a connection a moment ago.
        """
        replicas = self.replicas or self.static
        now = time.monotonic()
        out = []
        for replica in replicas:
            if self.held(replica, now) and not include_held:
                continue
            mine = self._assigned.get(replica.instance_id, 0)
            if mine > replica.load.active_sessions:
                load = replica.load.model_copy(update={"active_sessions": mine})
                out.append(replica.model_copy(update={"load": load}))
            else:
                out.append(replica)
        return out

    def held(self, replica: ReplicaInfo, now: float | None = None) -> bool:
        """Whether routing tries ``replica`` last: it failed a probe or a connection a
        moment ago, or it has missed its heartbeats (:meth:`silent`)."""
        now = time.monotonic() if now is None else now
        return self._failed.get(replica.instance_id, 0.0) >= now or self.silent(replica, now)

    def silent(self, replica: ReplicaInfo, now: float | None = None) -> bool:
        """Whether ``replica`` has missed :data:`STALE_BEATS` heartbeats, as this gateway saw
        its entry in Redis (its TTL may run for a while yet): a stopped or hung process.

        Judged on this gateway's clock from when each write was first seen, so clocks of
        other machines do not matter; never while Redis is unreachable (nothing is seen).
        """
        interval = replica.heartbeat_interval_s
        seen = self._beats.get(replica.instance_id)
        if interval is None or seen is None or not self.connected:
            return False
        now = time.monotonic() if now is None else now
        return now - seen[1] > STALE_BEATS * interval + 2 * self.refresh_s

    def route(self, choose: Callable[[list[ReplicaInfo]], list[ReplicaInfo]]) -> list[ReplicaInfo]:
        """The replicas ``choose`` orders, then the held-out ones it would take.

        A replica held out after a missed probe or a refused connection is tried last
        rather than never: a busy machine can miss a probe, and refusing a client while
        a replica that may well be alive is registered loses more than one slow try.
        """
        chosen = choose(self.snapshot())
        seen = {r.instance_id for r in chosen}
        held = [r for r in choose(self.snapshot(include_held=True)) if r.instance_id not in seen]
        return chosen + held

    def set_mode(self, mode: str) -> None:
        """Adopt a mode this gateway just wrote to Redis (no waiting for a refresh)."""
        self._mode_epoch += 1
        self.mode = mode

    def set_default_model(self, model: str) -> None:
        """Adopt a default ASR model this gateway just wrote (or holds alone, without Redis)."""
        self._mode_epoch += 1
        self.default_model = model

    def assign(self, replica: ReplicaInfo) -> None:
        """Count a session this gateway routed to ``replica``."""
        self._assigned[replica.instance_id] = self._assigned.get(replica.instance_id, 0) + 1

    def release(self, replica: ReplicaInfo) -> None:
        """The session routed to ``replica`` has ended or moved."""
        left = self._assigned.get(replica.instance_id, 0) - 1
        if left > 0:
            self._assigned[replica.instance_id] = left
        else:
            self._assigned.pop(replica.instance_id, None)

    def mark_failed(self, replica: ReplicaInfo, hold_s: float | None = None) -> None:
        """Keep a replica that just failed out of routing for ``hold_s`` (default
        ``failed_hold_s``)."""
        hold = self.failed_hold_s if hold_s is None else hold_s
        self._failed[replica.instance_id] = time.monotonic() + hold

    async def refresh(self) -> None:
        """Read the registry and the mode once; keep the old view if Redis fails."""
        if self.client is None:
            return
        epoch = self._mode_epoch
        try:
            replicas = await self.client.snapshot()
            mode = await self.client.get_mode(self.default_mode)
            default_model = await self.client.get_default_model()
        except RegistryUnavailable as exc:
            if self.connected or self.last_error is None:
                _LOGGER.warning(
                    "registry unavailable, serving from the last snapshot: %s", exc.message
                )
            self.connected = False
            self.last_error = exc.message
            return
        if not self.connected and self.last_error is not None:
            _LOGGER.info("registry reachable again")
        self.replicas = replicas
        self._note_beats(replicas)
        if epoch == self._mode_epoch:
            # A mode (or default model) set locally while this read was in flight is newer.
            self.mode = mode
            self.default_model = default_model
        self.connected = True
        self.last_error = None
        self.refreshed_at = time.time()

    def _note_beats(self, replicas: list[ReplicaInfo]) -> None:
        now = time.monotonic()
        beats = {}
        for replica in replicas:
            last = self._beats.get(replica.instance_id)
            same = last is not None and last[0] == replica.updated_at
            beats[replica.instance_id] = last if same and last else (replica.updated_at, now)
        self._beats = beats
        silent = {r.instance_id for r in replicas if self.silent(r, now)}
        for replica in replicas:
            if (replica.instance_id in silent) != (replica.instance_id in self._silent):
                _LOGGER.warning(
                    "%s %s %s",
                    replica.kind,
                    replica.url,
                    "missed its heartbeats: routed around until it beats again"
                    if replica.instance_id in silent
                    else "beats again: back in routing",
                )
        self._silent = silent

    async def start(self) -> None:
        """First refresh now, then keep refreshing in the background."""
        await self.refresh()
        self._task = asyncio.create_task(self._run(), name="gateway-registry-view")
        if self.probe_interval_s > 0:
            self._probe_task = asyncio.create_task(self._probe_loop(), name="gateway-probes")

    async def stop(self) -> None:
        """Stop refreshing and close the Redis connection."""
        for task in (self._task, self._probe_task):
            await stop_task(task)
        if self.client is not None:
            await self.client.close()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.refresh_s)
            await self.refresh()

    async def probe(self, client: httpx.AsyncClient) -> list[ReplicaInfo]:
        """GET every replica's /health once; keep the ones that fail out of routing.

        A replica can keep heartbeating while it cannot serve (its engine wedged, its
        port unreachable from here); the probe catches what the TTL cannot.
        """
        replicas = self.replicas or self.static
        results = await asyncio.gather(
            *(client.get(f"{r.url}/health") for r in replicas), return_exceptions=True
        )
        failed = []
        for replica, result in zip(replicas, results, strict=True):
            if not isinstance(result, BaseException) and result.status_code == 200:
                self._probe_misses.pop(replica.instance_id, None)
                continue
            misses = self._probe_misses.get(replica.instance_id, 0) + 1
            self._probe_misses[replica.instance_id] = misses
            # Two misses in a row: one slow answer from a busy replica is not a failure.
            if misses >= PROBE_MISSES:
                failed.append(replica)
                self.mark_failed(replica, hold_s=self.probe_interval_s * 2)
        if failed:
            _LOGGER.warning("health probe failed: %s", ", ".join(r.url for r in failed))
        return failed

    async def _probe_loop(self) -> None:
        async with httpx.AsyncClient(
            timeout=min(3.0, self.probe_interval_s), trust_env=False
        ) as client:
            while True:
                await asyncio.sleep(self.probe_interval_s)
                await self.probe(client)
