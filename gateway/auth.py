"""API keys and limits in front of every gateway route.

The keys themselves are :class:`gateway.keys.KeyRing`'s. A client presents one as
``Authorization: Bearer``, ``X-API-Key`` or ``?api_key=`` (browsers cannot set
headers on a WebSocket).

* No client keys and no key file configured: auth is off, every caller is anonymous.
* ``admin_key`` set: admin routes need it; it is also a valid client key.
* ``admin_key`` unset: admin routes take any client key (or none when auth is off).

HTTP: :func:`guard_http` is an app-wide dependency (every route but the probes in
:data:`PUBLIC_PATHS`); :func:`require_client` and :func:`require_admin` return the
caller's :class:`Principal`. A missing or wrong key is a 401 JSON error, a client
key on an admin route a 403, a caller over its request rate a 429 with
``retry_after`` and a ``Retry-After`` header.

WebSocket: the route accepts first, then :func:`claim_session` (streams) or
:func:`authorize_websocket` (followers) check; a refused socket gets a
``{"type":"error"}`` message and a close code: 4401 (no or wrong key), 4403 (not
the admin key), 1013 (``busy`` or ``rate_limited``, with ``retry_after``).
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Annotated

from fastapi import Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from gateway.deps import get_state
from gateway.keys import Principal
from gateway.session_client import SessionClient
from gateway.state import GatewayState
from voicemesh.errors import Forbidden, LimitExceeded, Unauthorized, VoiceMeshError
from voicemesh.http import error_body
from voicemesh.protocol import CLOSE_FORBIDDEN, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED
from voicemesh.wire import ClientSocket

_LOGGER = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""Probes that answer without a key (liveness, readiness, Prometheus scrapes)."""


def presented_key(conn: HTTPConnection) -> str | None:
    """The key a request or WebSocket carries: Bearer token, X-API-Key, or ?api_key=."""
    authorization = conn.headers.get("authorization", "")
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    header = conn.headers.get("x-api-key", "").strip()
    if header:
        return header
    query = conn.query_params.get("api_key", "").strip()
    return query or None


def _not_admin(principal: Principal, key: str | None) -> VoiceMeshError:
    """The error for a principal on an admin route it may not use."""
    if principal.anonymous:
        return Unauthorized(
            "the admin key is required" if key is None else "the admin key is not valid"
        )
    return Forbidden("this route needs the admin key")


def _authenticate(conn: HTTPConnection, *, admin: bool) -> Principal:
    """The caller's principal, or Unauthorized / Forbidden."""
    key = presented_key(conn)
    principal = get_state(conn).keys.identify(key)
    if principal is None:
        raise Unauthorized(
            "a valid API key is required (Authorization: Bearer, X-API-Key or ?api_key=)"
            if key is None
            else "the API key is not valid"
        )
    if admin and not principal.admin:
        raise _not_admin(principal, key)
    return principal


async def require_client(conn: HTTPConnection) -> Principal:
    """Dependency: the calling client, counted once against its request rate."""
    cached: Principal | None = getattr(conn.state, "principal", None)
    if cached is not None:
        return cached
    principal = _authenticate(conn, admin=False)
    refused = get_state(conn).limits.admit_request(principal.limit_key)
    if refused is not None:
        raise LimitExceeded(
            refused.message,
            code=refused.code,
            retry_after=refused.retry_after,
            scope=refused.scope,
            key_id=principal.key_id,
        )
    conn.state.principal = principal
    return principal


async def require_admin(conn: HTTPConnection) -> Principal:
    """Dependency: the calling administrator (the admin key, or any client key without one)."""
    principal = await require_client(conn)
    if not principal.admin:
        raise _not_admin(principal, presented_key(conn))
    return principal


ClientPrincipal = Annotated[Principal, Depends(require_client)]
"""A route parameter of this type gets the calling client."""
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
"""A route parameter of this type gets the calling administrator."""


def route_path(conn: HTTPConnection) -> str:
    """The matched route's path template (bounded cardinality for logs and metrics)."""
    route = conn.scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else conn.url.path


async def guard_http(conn: HTTPConnection) -> None:
    """App-wide dependency: every HTTP route but the probes needs a client key and a slot
    in the request rate. WebSocket routes check for themselves after accepting."""
    if conn.scope["type"] != "http" or route_path(conn) in PUBLIC_PATHS:
        return
    await require_client(conn)


def install_access_errors(app: FastAPI) -> None:
    """JSON errors with the headers their status codes call for (WWW-Authenticate, Retry-After)."""

    def _request_id(request: Request) -> str:
        return str(getattr(request.state, "request_id", "") or "")

    @app.exception_handler(Unauthorized)
    @app.exception_handler(Forbidden)
    async def _refused(request: Request, exc: VoiceMeshError) -> JSONResponse:
        rid = _request_id(request)
        _LOGGER.warning(
            "request %s refused: %s %s: %s", rid, exc.code, request.url.path, exc.message
        )
        get_state(request).metrics.error(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(
            error_body(exc.code, exc.message, rid), status_code=exc.status_code, headers=headers
        )

    @app.exception_handler(LimitExceeded)
    async def _limited(request: Request, exc: LimitExceeded) -> JSONResponse:
        rid = _request_id(request)
        retry_after = exc.retry_after
        _LOGGER.warning(
            "request %s refused: %s (%s limit) for %s, retry after %d s",
            rid,
            exc.code,
            exc.scope,
            exc.key_id,
            retry_after,
        )
        get_state(request).metrics.error(exc.code)
        return JSONResponse(
            error_body(exc.code, exc.message, rid, retry_after=retry_after, limit=exc.scope),
            status_code=429,
            headers={"Retry-After": str(retry_after)},
        )


# ---------------------------------------------------------------------- WebSockets


def _count_ws(state: GatewayState, ws: WebSocket, status: int) -> None:
    state.metrics.http_requests.labels(route_path(ws), str(status)).inc()


async def refuse_websocket(
    ws: WebSocket,
    code: str,
    message: str,
    close_code: int,
    *,
    retry_after: int | None = None,
    client: SessionClient | None = None,
) -> None:
    """Tell an accepted WebSocket why it is refused, then close it with ``close_code``.

    ``client``: the protocol adapter that words the refusal (default: the seed protocol's
    ``{"type":"error"}`` message).
    """
    state = get_state(ws)
    _count_ws(state, ws, close_code)
    extra = {} if retry_after is None else {"retry_after": retry_after}
    speaker = client or ClientSocket(ws, metrics=state.metrics)
    await speaker.refuse(code, message, close_code, **extra)


async def authorize_websocket(
    ws: WebSocket, *, admin: bool = False, client: SessionClient | None = None
) -> Principal | None:
    """The principal of an accepted WebSocket, or None after refusing it (error + close)."""
    try:
        principal = _authenticate(ws, admin=admin)
    except (Unauthorized, Forbidden) as exc:
        _LOGGER.warning("websocket %s refused: %s: %s", ws.url.path, exc.code, exc.message)
        close = CLOSE_UNAUTHORIZED if isinstance(exc, Unauthorized) else CLOSE_FORBIDDEN
        await refuse_websocket(ws, exc.code, exc.message, close, client=client)
        return None
    return principal


class SessionSlot:
    """A streaming session's place in the limits; ``async with`` gives it back at the end."""

    def __init__(self, state: GatewayState, principal: Principal) -> None:
        self.state = state
        self.principal = principal
        self._held = True
        state.active_sessions += 1

    def release(self) -> None:
        """Give the slot back (once)."""
        if self._held:
            self._held = False
            self.state.limits.end_session(self.principal.limit_key)
            self.state.active_sessions -= 1

    async def __aenter__(self) -> SessionSlot:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


async def claim_session(ws: WebSocket, client: SessionClient | None = None) -> SessionSlot | None:
    """Admit an accepted streaming WebSocket: its key, its rate, a free session slot.

    Returns the held slot, or None after the client got an error message and a close
    (worded by ``client``, the session's protocol adapter, when given). A refusal for
    lack of a slot is ``busy`` (:class:`voicemesh.errors.Busy`'s code).
    """
    principal = await authorize_websocket(ws, client=client)
    if principal is None:
        return None
    state = get_state(ws)
    refused = state.limits.admit_session(principal.limit_key)
    if refused is not None:
        _LOGGER.warning(
            "session refused for %s: %s (%s limit)", principal.key_id, refused.code, refused.scope
        )
        await refuse_websocket(
            ws,
            refused.code,
            refused.message,
            CLOSE_TRY_AGAIN,
            retry_after=refused.retry_after,
            client=client,
        )
        return None
    _count_ws(state, ws, 101)
    return SessionSlot(state, principal)


async def admit_follower(ws: WebSocket) -> Principal | None:
    """Admit an accepted admin WebSocket (e.g. live status): the admin key and the rate."""
    principal = await authorize_websocket(ws, admin=True)
    if principal is None:
        return None
    refused = get_state(ws).limits.admit_request(principal.limit_key)
    if refused is not None:
        _LOGGER.warning(
            "status follower refused for %s: %s (%s limit)",
            principal.key_id,
            refused.code,
            refused.scope,
        )
        await refuse_websocket(
            ws, refused.code, refused.message, CLOSE_TRY_AGAIN, retry_after=refused.retry_after
        )
        return None
    _count_ws(get_state(ws), ws, 101)
    return principal
