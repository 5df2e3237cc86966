"""The operator's side of the gateway: admin API, live status, readiness, request metrics.

* ``GET /v1/admin/status``: the specification's fields (:mod:`gateway.admin_stats`:
  status, usage summed over the mesh, loaded models, request stats), then uptime,
  version, the gateway process's memory and CPU, services and their replicas,
  routing mode and request stats by kind;
* ``GET /v1/admin/services``: the replicas and the order new sessions try them;
* ``GET``/``POST /v1/admin/mode``: the STT routing mode, stored in Redis so that
  every gateway replica follows it;
* ``WS /v1/ws/status``: ``{"type", "timestamp", "data"}`` messages: a
  ``status_update`` every ``status_interval_s`` and every gateway event as it happens
  (``request_completed``, ``failover``, ``service_up``, ``service_down``,
  ``mode_changed``, ``config_reloaded``);
* ``GET /ready``: 200 once an STT backend is routable and the Redis state is known.

:class:`StatusMonitor` runs for the app's lifetime: it turns registry changes into
``service_up`` / ``service_down`` events, a mode changed by another replica into
``mode_changed``, and samples the process's CPU use.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import psutil
from fastapi import APIRouter, Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from starlette.requests import HTTPConnection

import voicemesh
from gateway.admin_stats import status_fields
from gateway.auth import AdminPrincipal, admit_follower, require_admin, route_path
from gateway.deps import GatewayStateDep
from gateway.routing import choose_backends, load_share
from gateway.state import GatewayState, feed_message
from voicemesh.http import error_body
from voicemesh.metrics import GatewayMetrics
from voicemesh.registry import ReplicaInfo, RoutingMode
from voicemesh.tasks import stop_task, within

_LOGGER = logging.getLogger(__name__)

MB = 1024 * 1024


def registry_state(state: GatewayState) -> str:
    """``disabled``, ``connected`` or ``unreachable``."""
    view = state.view
    if view.client is None:
        return "disabled"
    return "connected" if view.connected else "unreachable"


def _replica_health(replica: ReplicaInfo, routable: bool) -> str:
    if not replica.healthy:
        return "unhealthy"
    if replica.draining:
        return "draining"
    # Healthy by its own account but held out of routing after a failure here.
    return "ok" if routable else "failed"


def describe_services(state: GatewayState) -> dict[str, list[dict[str, Any]]]:
    """Every known replica grouped by service kind, with load, health and draining."""
    view = state.view
    now = time.time()
    current = {r.instance_id: r for r in view.snapshot()}
    static = not view.replicas
    services: dict[str, list[dict[str, Any]]] = {}
    for known in view.replicas or view.static:
        replica = current.get(known.instance_id, known)
        services.setdefault(replica.kind, []).append(
            {
                "instance_id": replica.instance_id,
                "url": replica.url,
                "device": replica.device,
                "model": replica.model,
                "engine": replica.engine,
                "capabilities": replica.capabilities,
                "load": replica.load.model_dump(),
                "load_share": round(load_share(replica), 3),
                "health": _replica_health(replica, replica.instance_id in current),
                "healthy": replica.healthy,
                "draining": replica.draining,
                "static": static,
                "age_s": round(now - replica.started_at, 1),
                "seen_s_ago": round(now - replica.updated_at, 1),
            }
        )
    return services


def stt_route(state: GatewayState) -> list[str]:
    """URLs a new streaming session would try, in order."""
    view = state.view
    return [
        r.url
        for r in choose_backends(
            view.mode, view.snapshot(), gpu_max_load=state.settings.gpu_max_load
        )
    ]


def readiness(state: GatewayState) -> list[str]:
    """Why the gateway cannot take work yet; empty when it is ready."""
    reasons = []
    if not stt_route(state):
        reasons.append("no STT backend is routable")
    if registry_state(state) == "unreachable":
        reasons.append(f"Redis state is unknown: {state.view.last_error or 'not reached yet'}")
    return reasons


class StatusMonitor:
    """Publishes registry and mode changes as events and samples the process's CPU."""

    def __init__(self, state: GatewayState, interval_s: float | None = None) -> None:
        self.state = state
        self.interval_s = interval_s or state.view.refresh_s
        self.process = psutil.Process(os.getpid())
        self.cpu_percent = 0.0
        self.mode = state.view.mode
        self._up: dict[str, ReplicaInfo] = {}
        self._task: asyncio.Task[None] | None = None

    def _serving(self) -> dict[str, ReplicaInfo]:
        view = self.state.view
        return {
            r.instance_id: r for r in view.replicas or view.static if r.healthy and not r.draining
        }

    async def start(self) -> None:
        """Take the current registry as the baseline and start watching."""
        self._up = self._serving()
        self.process.cpu_percent(None)  # the first call only starts the measurement
        self._task = asyncio.create_task(self._run(), name="gateway-status-monitor")

    async def stop(self) -> None:
        """Stop watching."""
        await stop_task(self._task)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.check()
            except Exception:
                _LOGGER.exception("status monitor check failed")

    def check(self) -> None:
        """Compare the registry and mode with the last look; publish what changed."""
        self.cpu_percent = float(self.process.cpu_percent(None))
        events = self.state.events
        serving = self._serving()
        for instance_id, replica in serving.items():
            if instance_id not in self._up:
                events.publish("service_up", **_replica_event(replica))
        for instance_id, replica in self._up.items():
            if instance_id not in serving:
                events.publish(
                    "service_down", **_replica_event(replica), reason=self._down_reason(instance_id)
                )
        self._up = serving
        mode = self.state.view.mode
        if mode != self.mode:
            self.mode_changed(self.mode, mode, source="registry")

    def _down_reason(self, instance_id: str) -> str:
        view = self.state.view
        for replica in view.replicas or view.static:
            if replica.instance_id == instance_id:
                return "draining" if replica.draining else "unhealthy"
        return "left the registry"

    def mode_changed(self, previous: str, mode: str, *, source: str, by: str | None = None) -> None:
        """Record and publish a new routing mode (once, however it was learned)."""
        self.mode = mode
        if mode != previous:
            _LOGGER.info(
                "routing mode %s -> %s (%s%s)", previous, mode, source, f" by {by}" if by else ""
            )
            self.state.events.publish(
                "mode_changed", mode=mode, previous=previous, source=source, by=by
            )

    def process_usage(self) -> dict[str, Any]:
        """Memory and CPU of the gateway process."""
        with self.process.oneshot():
            memory = self.process.memory_info()
            threads = self.process.num_threads()
        return {
            "pid": self.process.pid,
            "rss_mb": round(memory.rss / MB, 1),
            "cpu_percent": round(self.cpu_percent, 1),
            "threads": threads,
        }


def get_monitor(conn: HTTPConnection) -> StatusMonitor:
    """The app's :class:`StatusMonitor` (set by the app's lifespan)."""
    monitor: StatusMonitor = conn.app.state.status_monitor
    return monitor


StatusMonitorDep = Annotated[StatusMonitor, Depends(get_monitor)]
"""A route parameter of this type gets the app's status monitor."""


def _replica_event(replica: ReplicaInfo) -> dict[str, Any]:
    return {
        "kind": replica.kind,
        "instance_id": replica.instance_id,
        "url": replica.url,
        "device": replica.device,
        "model": replica.model,
    }


def status_update(state: GatewayState, monitor: StatusMonitor) -> dict[str, Any]:
    """``data`` of a ``status_update``: the specification's names, then the full status."""
    status = build_status(state, monitor)
    return {
        "memory": status["memory_usage_mb"],
        "cpu": status["cpu_usage_percent"],
        **{key: status[key] for key in ("queue_length", "active_requests", "model_status")},
        **status,
    }


def build_status(state: GatewayState, monitor: StatusMonitor) -> dict[str, Any]:
    """What ``GET /v1/admin/status`` answers and ``status_update`` carries."""
    settings = state.settings
    process = monitor.process_usage()
    return {
        "service": "gateway",
        "version": voicemesh.__version__,
        "instance_id": settings.instance_id,
        "uptime_s": round(time.time() - state.started_at, 1),
        **status_fields(state, process, readiness(state)),
        "process": process,
        "mode": state.view.mode,
        "redis": registry_state(state),
        "auth": "on" if state.keys.enabled else "off",
        "sessions": {
            "active": state.active_sessions,
            "max_total": settings.max_sessions_total,
            "max_per_key": settings.max_sessions_per_key,
        },
        "services": describe_services(state),
        "stt_route": stt_route(state),
        "requests": state.stats.summary(),
    }


# ---------------------------------------------------------------------- routes

router = APIRouter()
"""Readiness and the live status WebSocket (each checks its own access)."""

admin = APIRouter(prefix="/v1/admin", tags=["admin"], dependencies=[Depends(require_admin)])
"""Admin HTTP routes: the admin key, or any client key when none is set."""


class ModeChange(BaseModel):
    """Body of ``POST /v1/admin/mode`` (any other field: 422 ``unknown_field``)."""

    model_config = ConfigDict(extra="forbid")

    mode: RoutingMode


@router.get("/ready")
async def ready(request: Request, state: GatewayStateDep) -> JSONResponse:
    """200 when an STT backend is routable and the Redis state is known, else 503."""
    reasons = readiness(state)
    details = {
        "stt_route": stt_route(state),
        "redis": registry_state(state),
        "mode": state.view.mode,
    }
    if reasons:
        return JSONResponse(
            error_body(
                "not_ready",
                "; ".join(reasons),
                request.state.request_id,
                reasons=reasons,
                **details,
            ),
            status_code=503,
        )
    return JSONResponse({"status": "ready", **details})


@admin.get("/status")
async def status(state: GatewayStateDep, monitor: StatusMonitorDep) -> dict[str, Any]:
    """Uptime, version, process usage, services, mode and request stats."""
    return build_status(state, monitor)


@admin.get("/services")
async def services(state: GatewayStateDep) -> dict[str, Any]:
    """Every replica by service, and the order new sessions try the STT ones."""
    return {
        "services": describe_services(state),
        "stt_route": stt_route(state),
        "mode": state.view.mode,
        "redis": registry_state(state),
    }


@admin.get("/mode")
async def get_mode(state: GatewayStateDep) -> dict[str, Any]:
    """The STT routing mode this replica follows."""
    return {
        "mode": state.view.mode,
        "default_mode": state.view.default_mode,
        "redis": registry_state(state),
    }


@admin.post("/mode")
async def set_mode(
    change: ModeChange, principal: AdminPrincipal, state: GatewayStateDep, monitor: StatusMonitorDep
) -> dict[str, Any]:
    """Set the STT routing mode for every gateway replica (503 when Redis is down)."""
    view = state.view
    previous = view.mode
    if view.client is not None:
        # Raises RegistryUnavailable (503) when Redis is down: the change would not
        # reach the other replicas, so none is made.
        await view.client.set_mode(change.mode)
    view.set_mode(change.mode)
    monitor.mode_changed(previous, change.mode, source="admin_api", by=principal.key_id)
    return {
        "mode": change.mode,
        "previous": previous,
        "scope": "local" if view.client is None else "shared",
    }


router.include_router(admin)


def _compact(message: dict[str, Any]) -> str:
    return json.dumps(message, separators=(",", ":"))


@router.websocket("/v1/ws/status")
async def status_feed(ws: WebSocket, state: GatewayStateDep, monitor: StatusMonitorDep) -> None:
    """Live status: ``status_update`` every interval, gateway events as they happen."""
    await ws.accept()
    if await admit_follower(ws) is None:
        return
    interval = state.settings.status_interval_s

    async def pump() -> None:
        async with state.events.subscribe() as events:
            next_update = time.monotonic()
            while True:
                wait = next_update - time.monotonic()
                if wait <= 0:
                    update = feed_message("status_update", status_update(state, monitor))
                    await ws.send_text(_compact(update))
                    next_update += interval
                    continue
                try:
                    event = await within(wait, events.get())
                except TimeoutError:
                    continue
                await ws.send_text(_compact(event))

    async def until_closed() -> None:
        while (await ws.receive())["type"] != "websocket.disconnect":
            pass  # followers have nothing to say; anything they send is ignored

    tasks = [asyncio.create_task(pump()), asyncio.create_task(until_closed())]
    try:
        done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            error = task.exception()
            if error is not None and not isinstance(error, WebSocketDisconnect | RuntimeError):
                _LOGGER.error("status feed failed: %r", error)
    finally:
        # stop_task waits with asyncio.wait, not gather: if this handler is itself
        # being cancelled, the CancelledError it raises must stay the canceller's own.
        for task in tasks:
            await stop_task(task)


def count_requests(app: FastAPI, metrics: GatewayMetrics) -> None:
    """Count every HTTP request by route template and status code."""

    @app.middleware("http")
    async def _count(
        request: Request, call_next: Callable[[Request], Awaitable[Response]]
    ) -> Response:
        # Absent before the lifespan ran (an app asked only for its OpenAPI document).
        state: GatewayState | None = getattr(request.app.state, "gateway", None)
        if state is not None:
            state.in_flight_requests += 1
        try:
            response = await call_next(request)
        except Exception:
            metrics.http_requests.labels(_route_label(request), "500").inc()
            raise
        finally:
            if state is not None:
                state.in_flight_requests -= 1
        metrics.http_requests.labels(_route_label(request), str(response.status_code)).inc()
        return response


def _route_label(request: Request) -> str:
    # Unmatched paths (scanners, typos) share one label so they cannot blow up the series.
    return route_path(request) if request.scope.get("route") is not None else "unmatched"
