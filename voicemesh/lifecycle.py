"""Start and stop a service's registration in Redis (shared by every service)."""

from __future__ import annotations

import logging
from collections.abc import Callable

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
