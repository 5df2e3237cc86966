"""Entry point of the gateway: ``WS /ws/transcribe`` (and ``/v1/asr/stream``) routed to STT.

Run: ``uvicorn --factory gateway.app:create_app``.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator

from fastapi import APIRouter, Depends, FastAPI, WebSocket
from fastapi.responses import JSONResponse

from gateway import (
    admin,
    admin_config,
    admin_models,
    asr,
    auth,
    benchmark_api,
    clone,
    realtime,
    transcriptions,
    tts,
    tts_api,
)
from gateway.benchmark_runner import BenchmarkRunner
from gateway.deps import GatewayStateDep
from gateway.panel import mount_control_panel
from gateway.registry_view import RegistryView, static_replicas
from gateway.resume import SessionKeeper, resume_request
from gateway.routing import choose_backends, choose_detector
from gateway.session_client import new_session_id
from gateway.settings import GatewaySettings, get_settings
from gateway.state import GatewayState
from gateway.stream import GatewayStream
from gateway.upload_deadline import UploadDeadline
from gateway.wyoming_server import WyomingServer
from voicemesh.errors import BadRequest
from voicemesh.http import install_http_basics
from voicemesh.internal_token import internal_headers
from voicemesh.lifecycle import apply_log_level
from voicemesh.metrics import GatewayMetrics
from voicemesh.registry import RegistryClient
from voicemesh.wire import ClientSocket, IdleLimits

_LOGGER = logging.getLogger(__name__)


def build_view(settings: GatewaySettings) -> RegistryView:
    """The registry view the settings describe (Redis, static URLs, or both)."""
    url = settings.resolved_redis_url()
    client = RegistryClient(url, ttl_s=settings.registry_ttl_s) if url else None
    static = static_replicas("stt_cpu_ws", settings.backend_urls, ["transcribe", "stream"])
    static += static_replicas("stt_tiny_ws", settings.detector_urls, ["detect"])
    return RegistryView(
        client,
        default_mode=settings.default_mode,
        refresh_s=settings.registry_refresh_s,
        static=static,
        probe_interval_s=settings.probe_interval_s,
        failed_hold_s=settings.failed_hold_s,
        engine_headers=internal_headers(settings.internal_token),
    )


router = APIRouter()
"""The gateway's own routes: ``/health`` and the streaming socket."""


@router.get("/health")
async def health(state: GatewayStateDep) -> JSONResponse:
    """Liveness and what the gateway routes to now: mode, Redis, replicas, STT route."""
    view = state.view
    replicas = view.snapshot()
    stt = choose_backends(view.mode, replicas)
    detectors = choose_detector(replicas)
    counts: dict[str, int] = {}
    for replica in replicas:
        counts[replica.kind] = counts.get(replica.kind, 0) + 1
    status = "degraded" if view.degraded or not stt else "ok"
    return JSONResponse(
        {
            "status": status,
            "service": "gateway",
            "mode": view.mode,
            "redis": "disabled"
            if view.client is None
            else ("connected" if view.connected else "unreachable"),
            "registry_error": view.last_error,
            "replicas": counts,
            "stt_route": [r.url for r in stt],
            "detector": detectors[0].url if detectors else None,
            "auth": "on" if state.keys.enabled else "off",
            "wyoming": state.wyoming,
            "uptime_s": round(time.time() - state.started_at, 1),
        }
    )


@router.websocket("/ws/transcribe")
@router.websocket("/v1/asr/stream")
async def transcribe(ws: WebSocket, state: GatewayStateDep) -> None:
    """``WS /ws/transcribe`` and ``/v1/asr/stream``: one session, routed and failed over."""
    await ws.accept()
    slot = await auth.claim_session(ws)
    if slot is None:
        return  # refused: the client got an error message and a close code
    async with slot:
        session_id = new_session_id()
        settings = state.settings
        idle = IdleLimits(settings.idle_ready_s, settings.idle_session_s)
        client = ClientSocket(ws, metrics=state.metrics, name=session_id, idle=idle)
        keeper = SessionKeeper(
            state.sessions,
            session_id=session_id,
            key_id=slot.principal.key_id,
            keep_finals=settings.resume_keep_finals,
            tail_s=settings.resume_tail_s,
            ack_interval_s=settings.ack_interval_s,
        )
        try:
            resume = resume_request(ws.query_params)
        except BadRequest as exc:
            resume = None
            await client.error(exc.code, exc.message)
        await GatewayStream(client, state, session_id, keeper=keeper).run(resume=resume)


async def start_wyoming(state: GatewayState) -> WyomingServer | None:
    """The Wyoming server when it is on and its port is free (else None, said in /health).

    A taken port does not stop the gateway: Wyoming is one front door among several,
    and the HTTP and WebSocket ones must not go down with it.
    """
    settings = state.settings
    if not settings.wyoming_enabled:
        return None
    server = WyomingServer(state)
    try:
        await server.start()
    except OSError as exc:
        where = f"{settings.wyoming_host}:{settings.wyoming_port}"
        state.wyoming = f"unavailable: cannot listen on {where}: {exc.strerror or exc}"
        _LOGGER.error("Wyoming server %s", state.wyoming)
        return None
    state.wyoming = server.address or "?"
    _LOGGER.info("Wyoming server on %s", state.wyoming)
    return server


def create_app(settings: GatewaySettings | None = None) -> FastAPI:
    """The gateway app; tests pass their own settings."""
    settings = settings or get_settings()
    apply_log_level(settings, "gateway")
    metrics = GatewayMetrics()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        view = build_view(settings)
        state = GatewayState(settings=settings, view=view, metrics=metrics)
        app.state.gateway = state
        monitor = admin.StatusMonitor(state)
        app.state.status_monitor = monitor
        benchmarks = BenchmarkRunner(state)
        app.state.benchmarks = benchmarks
        follower = admin_config.ConfigFollower(state)
        app.state.config_follower = follower
        await view.start()
        await monitor.start()
        await follower.start()
        wyoming = await start_wyoming(state)
        try:
            yield
        finally:
            if wyoming is not None:
                await wyoming.stop()
            await benchmarks.stop()
            await follower.stop()
            await monitor.stop()
            await view.stop()
            await state.sessions.close()
            await state.http.aclose()

    # Every HTTP route but the probes needs a client key (see gateway.auth).
    app = FastAPI(
        title="VoiceMesh gateway", lifespan=lifespan, dependencies=[Depends(auth.guard_http)]
    )
    install_http_basics(app, metrics)
    app.add_middleware(UploadDeadline, timeout_s=settings.upload_read_timeout_s)
    auth.install_access_errors(app)
    benchmark_api.install_benchmark_errors(app)
    admin.count_requests(app, metrics)
    app.include_router(transcriptions.router)
    app.include_router(asr.router)
    app.include_router(tts.router)
    app.include_router(tts_api.router)
    app.include_router(clone.router)
    app.include_router(admin.router)
    app.include_router(admin_config.router)
    app.include_router(admin_models.router)
    app.include_router(realtime.router)
    app.include_router(benchmark_api.router)

    app.include_router(router)

    # Last: the panel's catch-all mount at / must come after every route.
    mount_control_panel(app, settings.control_panel_dir, settings.client_js_dir)
    return app
