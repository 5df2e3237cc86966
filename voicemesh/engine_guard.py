"""Only the gateway speaks to the engines: the guard every engine service installs.

The engines trust what the gateway tells them (whose voice profile a call is for, in
:data:`~voicemesh.protocol.OWNER_HEADER`), so anyone who could reach an engine's port
could pose as the gateway. With ``internal_token`` set (``VOICEMESH_INTERNAL_TOKEN`` or
its ``_FILE``), every engine service refuses each HTTP request and WebSocket that does
not carry it in :data:`~voicemesh.protocol.INTERNAL_TOKEN_HEADER`: HTTP with a 401
``internal_token_required`` JSON error, a WebSocket with that error message and close
code 4401. ``/health`` and ``/metrics`` stay open for probes and Prometheus. The gateway
(and an engine calling another, e.g. ``tts_clone`` asking STT for a transcript) sends
:func:`voicemesh.internal_token.internal_headers` on every call.
"""

from __future__ import annotations

import hmac
import logging
import uuid

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import SecretStr
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.websockets import WebSocket

from voicemesh.errors import InternalTokenRequired
from voicemesh.http import error_body
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import CLOSE_UNAUTHORIZED, INTERNAL_TOKEN_HEADER
from voicemesh.wire import ClientSocket

_LOGGER = logging.getLogger(__name__)

OPEN_PATHS = frozenset({"/health", "/metrics"})
"""Routes an engine serves to anyone: liveness probes and Prometheus."""

_HEADER_KEY = INTERNAL_TOKEN_HEADER.lower().encode("latin-1")


class InternalTokenGuard:
    """ASGI middleware: calls without the internal token reach nothing but the open paths."""

    def __init__(self, app: ASGIApp, token: SecretStr, metrics: ServiceMetrics) -> None:
        self.app = app
        self._token = token.get_secret_value().encode("utf-8")
        self.metrics = metrics

    def carries_token(self, scope: Scope) -> bool:
        """True when the request's header holds the token (compared in constant time)."""
        for key, value in scope.get("headers", ()):
            if key == _HEADER_KEY:
                return hmac.compare_digest(value, self._token)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] not in ("http", "websocket")
            or scope["path"] in OPEN_PATHS
            or self.carries_token(scope)
        ):
            await self.app(scope, receive, send)
            return
        refusal = InternalTokenRequired(
            "this engine serves only the VoiceMesh gateway: the request lacks the internal "
            f"token ({INTERNAL_TOKEN_HEADER}), or it is not this mesh's; call the gateway"
        )
        peer = scope.get("client") or ("?", 0)
        _LOGGER.warning(
            "refused %s %s from %s: %s", scope["type"], scope["path"], peer[0], refusal.code
        )
        if scope["type"] == "websocket":
            ws = ClientSocket(WebSocket(scope, receive, send), metrics=self.metrics)
            await ws.ws.accept()
            await ws.refuse(refusal.code, refusal.message, CLOSE_UNAUTHORIZED)
            return
        self.metrics.error(refusal.code)
        headers = dict(scope.get("headers", ()))
        request_id = headers.get(b"x-request-id", b"").decode("latin-1") or uuid.uuid4().hex[:16]
        response = JSONResponse(
            error_body(refusal.code, refusal.message, request_id),
            status_code=refusal.status_code,
            headers={"X-Request-ID": request_id},
        )
        await response(scope, receive, send)


def guard_engine(app: FastAPI, token: SecretStr | None, metrics: ServiceMetrics) -> None:
    """Make ``app`` (an engine service) answer only callers with the internal token.

    No token set: the engine trusts every caller, as before (said once in the log).
    """
    if token is None:
        _LOGGER.warning(
            "%s: no internal token set: this engine answers anyone who reaches its port "
            "(set VOICEMESH_INTERNAL_TOKEN so that only the gateway can)",
            app.title,
        )
        return
    app.add_middleware(InternalTokenGuard, token=token, metrics=metrics)
    _LOGGER.info("%s: accepts only the gateway (internal token required)", app.title)
