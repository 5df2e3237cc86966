"""What every engine service does around its lifespan (shared by every service).

:func:`serve_replica` registers the replica in Redis, keeps it fresh, drains it on
SIGTERM and deregisters it on exit; :func:`apply_log_level` makes the ``log_level``
setting count.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

from voicemesh.registry import RegistryClient, RegistryHeartbeat, ReplicaInfo
from voicemesh.settings import ServiceSettings

_LOGGER = logging.getLogger(__name__)


async def start_heartbeat(
    settings: ServiceSettings, info: Callable[[], ReplicaInfo]
) -> RegistryHeartbeat | None:
    """Register this replica and keep it fresh; None when no Redis is configured."""
    url = settings.resolved_redis_url()
    if not url:
        _LOGGER.info("no Redis configured: this replica does not register itself")
        return None
    client = RegistryClient(url, ttl_s=settings.registry_ttl_s)
    heartbeat = RegistryHeartbeat(client, info, interval_s=settings.heartbeat_interval_s)
    await heartbeat.start()
    return heartbeat


async def stop_heartbeat(heartbeat: RegistryHeartbeat | None) -> None:
    """Deregister and close the Redis connection."""
    if heartbeat is None:
        return
    await heartbeat.stop(deregister=True)
    await heartbeat.client.close()


def apply_log_level(settings: ServiceSettings, service: str) -> None:
    """Log at ``settings.log_level`` from the shared package and the service's own package.

    uvicorn sets up only its own loggers; when nothing else has set up logging either,
    lines go to stderr (the root logger keeps its level, so libraries stay quiet).
    """
    level = settings.log_level.upper()
    for name in ("voicemesh", service):
        logging.getLogger(name).setLevel(level)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(levelname)s %(name)s: %(message)s")


@contextlib.asynccontextmanager
async def serve_replica(
    settings: ServiceSettings,
    info: Callable[[], ReplicaInfo],
    *,
    is_idle: Callable[[], bool] | None = None,
    mark_draining: Callable[[], None] | None = None,
    max_drain_s: float = 0.0,
) -> AsyncIterator[RegistryHeartbeat | None]:
    """Register this replica for as long as the block runs; yields its heartbeat (or None).

    With ``is_idle`` and ``mark_draining``, SIGTERM drains the replica first (see
    :func:`drain_on_sigterm`): ``mark_draining`` flags it, and the registry hears so at
    once. On exit the replica is marked draining, deregistered and its Redis closed.
    """
    heartbeat = await start_heartbeat(settings, info)
    drains = is_idle is not None and mark_draining is not None
    _LOGGER.debug(
        "replica %s: registry %s, drain on SIGTERM: %s",
        settings.instance_id,
        registry_status(heartbeat),
        drains,
    )
    if is_idle is not None and mark_draining is not None:
        mark = mark_draining

        async def start_draining() -> None:
            mark()
            if heartbeat is not None:
                await heartbeat.beat_now()

        drain_on_sigterm(is_idle, start_draining, max_drain_s=max_drain_s)
    try:
        yield heartbeat
    finally:
        if mark_draining is not None:
            mark_draining()
        await stop_heartbeat(heartbeat)


def registry_status(heartbeat: RegistryHeartbeat | None) -> str:
    """``disabled``, ``connected`` or ``disconnected``, as /health reports it."""
    if heartbeat is None:
        return "disabled"
    return "connected" if heartbeat.connected else "disconnected"


def drain_on_sigterm(
    is_idle: Callable[[], bool],
    start_draining: Callable[[], Awaitable[None]],
    *,
    max_drain_s: float,
) -> None:
    """On SIGTERM: stop taking sessions, let live ones finish, then shut down.

    uvicorn alone closes live WebSockets on SIGTERM; a replica being scaled down or
    redeployed should instead finish what it serves. ``start_draining`` marks the
    replica draining (health and registry say so at once, so gateways route new
    sessions elsewhere); when ``is_idle`` or after ``max_drain_s``, SIGINT asks
    uvicorn for its normal graceful shutdown.
    """
    loop = asyncio.get_running_loop()

    async def drain() -> None:
        _LOGGER.info("SIGTERM: draining (at most %.0f s)", max_drain_s)
        await start_draining()
        for _ in range(int(max_drain_s / _DRAIN_POLL_S)):
            if is_idle():
                break
            await asyncio.sleep(_DRAIN_POLL_S)
        _LOGGER.info("drained: shutting down")
        os.kill(os.getpid(), signal.SIGINT)

    def on_sigterm() -> None:
        loop.remove_signal_handler(signal.SIGTERM)
        task = loop.create_task(drain())
        _DRAINS.add(task)
        task.add_done_callback(_DRAINS.discard)

    try:
        loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    except (RuntimeError, ValueError) as exc:  # RuntimeError covers loops without signals
        # Not the main thread (an in-process test client) or no signals here: the
        # server's own SIGTERM handling stays in place.
        _LOGGER.debug("SIGTERM drain not installed: %s", exc)


_DRAINS: set[asyncio.Task[None]] = set()
_DRAIN_POLL_S = 0.2
