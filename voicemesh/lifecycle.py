"""Start and stop a service's registration in Redis (shared by every service)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

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
