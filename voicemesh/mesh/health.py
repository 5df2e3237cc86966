"""Live health of a mesh: probing each process, and waiting for a new mesh to be ready."""

from __future__ import annotations

import logging
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal

import httpx

from voicemesh.mesh.plan import MeshPaths, MeshPlan, ProcessPlan
from voicemesh.mesh.state import MeshState, ProcessState, pid_alive, read_state

Health = Literal["ok", "unhealthy", "down"]

HEALTH_TIMEOUT_S = 1.0
"""How long one probe may take."""
UP_CRASH_LIMIT = 3
"""``up`` gives up on a service that exited this many times without ever becoming healthy."""
POLL_S = 0.2
"""How often waits re-read the state and probe again."""


def redis_answers(url: str, timeout_s: float = HEALTH_TIMEOUT_S) -> bool:
    """True when the Redis at ``url`` answers PING within ``timeout_s``."""
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    client = redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
    )
    try:
        return bool(client.ping())
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def _http_health(client: httpx.Client, url: str) -> Health:
    try:
        response = client.get(f"{url}/health")
    except httpx.HTTPError:
        return "down"
    return "ok" if response.status_code == 200 else "unhealthy"


def health_client() -> httpx.Client:
    """The HTTP client every probe uses: short timeout, no proxy, quiet."""
    # Probes run every fraction of a second: httpx's per-request INFO lines would drown
    # the progress output and the supervisor log.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, logging.getLogger("httpx").level))
    # trust_env=False: a proxy from the environment must never see loopback probes.
    return httpx.Client(timeout=HEALTH_TIMEOUT_S, trust_env=False)


def probe_health(process: ProcessState, client: httpx.Client) -> Health:
    """Live health of one recorded process: ok, unhealthy or down."""
    if not pid_alive(process.pid):
        return "down"
    if process.kind == "redis":
        return "ok" if redis_answers(process.url) else "down"
    return _http_health(client, process.url)


@dataclass(frozen=True)
class MeshHealth:
    """The health of every recorded process, and of an external Redis."""

    state: MeshState
    health: list[Health]
    """One entry per ``state.processes()``, in that order."""
    external_redis_ok: bool | None
    """None when the mesh runs its own Redis (it is among the processes)."""

    @property
    def all_ok(self) -> bool:
        """True when every process and the external Redis answer."""
        return all(item == "ok" for item in self.health) and self.external_redis_ok is not False


def check_mesh_health(state: MeshState) -> MeshHealth:
    """Probe every recorded process at once (and the external Redis, if one is used)."""
    processes = state.processes()
    with health_client() as client, ThreadPoolExecutor(max_workers=8) as pool:
        health = list(pool.map(lambda item: probe_health(item, client), processes))
        external_ok = None if state.redis else redis_answers(state.redis_url)
    return MeshHealth(state, health, external_ok)


@dataclass(frozen=True)
class HealthWait:
    """How waiting for a new mesh ended."""

    ok: bool
    reason: str = ""
    """Why not, when not ok (``interrupted`` when a stop was asked for)."""
    log: str | None = None
    """The log of the process that failed, when one did."""


def wait_until_healthy(
    plan: MeshPlan,
    paths: MeshPaths,
    *,
    timeout: float,
    on_ready: Callable[[ProcessPlan, float], None] | None = None,
    tick: Callable[[], None] | None = None,
    supervisor: subprocess.Popen[bytes] | None = None,
    stopped: Callable[[], bool] = lambda: False,
) -> HealthWait:
    """Wait for Redis and every service; ``on_ready(process, seconds)`` as each one answers."""
    started = time.monotonic()
    deadline = started + timeout
    healthy: set[str] = set()
    wanted = plan.processes()
    with health_client() as client:
        while True:
            if tick is not None:
                tick()
            if stopped():
                return HealthWait(False, "interrupted")
            if supervisor is not None and supervisor.poll() is not None:
                return HealthWait(
                    False,
                    f"the supervisor exited with {supervisor.returncode}",
                    str(paths.supervisor_log),
                )
            state = read_state(paths)
            recorded = {item.label: item for item in state.processes()} if state else {}
            for item in wanted:
                current = recorded.get(item.label)
                if item.label in healthy or current is None:
                    continue
                if probe_health(current, client) == "ok":
                    healthy.add(item.label)
                    if on_ready is not None:
                        on_ready(item, time.monotonic() - started)
                elif current.exits >= UP_CRASH_LIMIT:
                    return HealthWait(
                        False,
                        f"{item.label} exited {current.exits} times before it became healthy",
                        item.log,
                    )
            if len(healthy) == len(wanted):
                return HealthWait(True)
            if time.monotonic() >= deadline:
                failing = next(item for item in wanted if item.label not in healthy)
                return HealthWait(
                    False,
                    f"{failing.label} did not become healthy within {timeout:.0f} s",
                    failing.log,
                )
            time.sleep(POLL_S)
