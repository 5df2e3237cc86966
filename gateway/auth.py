"""API keys and limits in front of every gateway route.

Keys come from settings: ``api_keys`` plus the lines of ``api_keys_file`` (blank
lines and ``#`` comments skipped; the file is read again when it changes, so keys
rotate without a restart). A client presents one as ``Authorization: Bearer``,
``X-API-Key`` or ``?api_key=`` (browsers cannot set headers on a WebSocket).

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

Keys are compared as SHA-256 digests with :func:`hmac.compare_digest`, against
every configured key, so timing says nothing about which key or how much matched.
A principal is named by a short fingerprint of its key, never the key itself.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, FastAPI, Request, WebSocket, WebSocketDisconnect
from fastapi.responses import JSONResponse
from starlette.requests import HTTPConnection

from gateway.limits import Refusal
from voicemesh.errors import VoiceMeshError
from voicemesh.http import error_body
from voicemesh.metrics import GatewayMetrics
from voicemesh.protocol import ErrorMessage

if TYPE_CHECKING:
    from gateway.settings import GatewaySettings
    from gateway.state import GatewayState

_LOGGER = logging.getLogger(__name__)

PUBLIC_PATHS = frozenset({"/health", "/ready", "/metrics"})
"""Probes that answer without a key (liveness, readiness, Prometheus scrapes)."""

CLOSE_UNAUTHORIZED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_TRY_AGAIN = 1013
ANONYMOUS = "anonymous"


class Unauthorized(VoiceMeshError):
    """No key, or a key that is not configured."""

    code = "unauthorized"
    status_code = 401


class Forbidden(VoiceMeshError):
    """A valid key without the rights the route needs (a client key on an admin route)."""

    code = "forbidden"
    status_code = 403


class LimitExceeded(VoiceMeshError):
    """A caller over its request rate or session count; try again after ``retry_after``."""

    status_code = 429

    def __init__(self, refusal: Refusal, principal: Principal) -> None:
        super().__init__(refusal.message, code=refusal.code)
        self.refusal = refusal
        self.principal = principal


@dataclass(frozen=True)
class Principal:
    """Who is calling: a key fingerprint (never the key), and whether it may administer."""

    key_id: str
    admin: bool
    anonymous: bool = False

    @property
    def limit_key(self) -> str | None:
        """The key its per-key limits are booked under (None: only overall limits)."""
        return None if self.anonymous else self.key_id


def fingerprint(key: str) -> str:
    """A short, non-secret name for a key (8 hex digits of its SHA-256)."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def read_key_file(path: Path) -> list[str]:
    """The keys of a key file: one a line, blank lines and ``#`` comments skipped."""
    lines = path.read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]


class KeyRing:
    """The configured client keys and admin key; tells a principal from a presented key."""

    def __init__(self, client_keys: list[str], admin_key: str | None = None,
                 key_file: Path | None = None) -> None:
        self._inline = [k for k in (key.strip() for key in client_keys) if k]
        self._admin: tuple[bytes, str] | None = None
        if admin_key:
            self._admin = (_digest(admin_key), f"admin-{fingerprint(admin_key)}")
        self._key_file = key_file
        self._file_stamp: tuple[float, int] | None = None
        self._clients: list[tuple[bytes, str]] = []
        if key_file is not None:
            try:
                self._file_stamp = self._stamp(key_file)
                file_keys = read_key_file(key_file)
            except OSError as exc:
                raise ValueError(f"cannot read api_keys_file {key_file}: {exc}") from exc
        else:
            file_keys = []
        self._set_clients(file_keys)

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> KeyRing:
        """The keys the gateway settings configure."""
        admin = settings.admin_key.get_secret_value() if settings.admin_key else None
        return cls([key.get_secret_value() for key in settings.api_keys], admin,
                   settings.api_keys_file)

    @staticmethod
    def _stamp(path: Path) -> tuple[float, int]:
        stat = path.stat()
        return stat.st_mtime, stat.st_size

    def _set_clients(self, file_keys: list[str]) -> None:
        keys = dict.fromkeys(self._inline + file_keys)
        self._clients = [(_digest(key), f"key-{fingerprint(key)}") for key in keys]

    def _reload_if_changed(self) -> None:
        """Pick up an edited key file; a file that vanished keeps the last keys."""
        if self._key_file is None:
            return
        try:
            stamp = self._stamp(self._key_file)
            if stamp == self._file_stamp:
                return
            file_keys = read_key_file(self._key_file)
        except OSError as exc:
            _LOGGER.warning("cannot re-read api_keys_file %s, keeping the last keys: %s",
                            self._key_file, exc)
            return
        self._file_stamp = stamp
        self._set_clients(file_keys)
        _LOGGER.info("api_keys_file %s reloaded: %d keys", self._key_file, len(file_keys))

    @property
    def enabled(self) -> bool:
        """True when client keys are configured (auth is on).

        A configured key file keeps auth on even while it lists no key: emptying
        or truncating it must lock clients out, not open the gateway.
        """
        self._reload_if_changed()
        return bool(self._clients) or self._key_file is not None

    def identify(self, presented: str | None) -> Principal | None:
        """The principal of a presented key; None when the key is missing or wrong.

        With auth off, any caller without a recognised key is anonymous.
        """
        self._reload_if_changed()
        if presented:
            digest = _digest(presented)
            # Compare against every key without stopping early.
            found: str | None = None
            for stored, key_id in self._clients:
                if hmac.compare_digest(digest, stored) and found is None:
                    found = key_id
            if self._admin is not None and hmac.compare_digest(digest, self._admin[0]):
                return Principal(key_id=self._admin[1], admin=True)
            if found is not None:
                return Principal(key_id=found, admin=self._admin is None)
        if not self.enabled:
            return Principal(key_id=ANONYMOUS, admin=self._admin is None, anonymous=True)
        return None


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


def _state(conn: HTTPConnection) -> GatewayState:
    state: GatewayState = conn.app.state.gateway
    return state


def _not_admin(principal: Principal, key: str | None) -> VoiceMeshError:
    """The error for a principal on an admin route it may not use."""
    if principal.anonymous:
        return Unauthorized("the admin key is required" if key is None
                            else "the admin key is not valid")
    return Forbidden("this route needs the admin key")


def _authenticate(conn: HTTPConnection, *, admin: bool) -> Principal:
    """The caller's principal, or Unauthorized / Forbidden."""
    key = presented_key(conn)
    principal = _state(conn).keys.identify(key)
    if principal is None:
        raise Unauthorized("a valid API key is required (Authorization: Bearer, X-API-Key "
                           "or ?api_key=)" if key is None else "the API key is not valid")
    if admin and not principal.admin:
        raise _not_admin(principal, key)
    return principal


async def require_client(conn: HTTPConnection) -> Principal:
    """Dependency: the calling client, counted once against its request rate."""
    cached: Principal | None = getattr(conn.state, "principal", None)
    if cached is not None:
        return cached
    principal = _authenticate(conn, admin=False)
    refused = _state(conn).limits.admit_request(principal.limit_key)
    if refused is not None:
        raise LimitExceeded(refused, principal)
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
        _LOGGER.warning("request %s refused: %s %s: %s", rid, exc.code, request.url.path,
                        exc.message)
        _state(request).metrics.error(exc.code)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status_code == 401 else None
        return JSONResponse(error_body(exc.code, exc.message, rid),
                            status_code=exc.status_code, headers=headers)

    @app.exception_handler(LimitExceeded)
    async def _limited(request: Request, exc: LimitExceeded) -> JSONResponse:
        rid = _request_id(request)
        retry_after = exc.refusal.retry_after
        _LOGGER.warning("request %s refused: %s (%s limit) for %s, retry after %d s", rid,
                        exc.code, exc.refusal.scope, exc.principal.key_id, retry_after)
        _state(request).metrics.error(exc.code)
        return JSONResponse(
            error_body(exc.code, exc.message, rid, retry_after=retry_after,
                       limit=exc.refusal.scope),
            status_code=429, headers={"Retry-After": str(retry_after)})


# ---------------------------------------------------------------------- WebSockets


def _count_ws(state: GatewayState, ws: WebSocket, status: int) -> None:
    if isinstance(state.metrics, GatewayMetrics):
        state.metrics.http_requests.labels(route_path(ws), str(status)).inc()


async def refuse_websocket(ws: WebSocket, code: str, message: str, close_code: int,
                           retry_after: int | None = None) -> None:
    """Tell an accepted WebSocket why it is refused, then close it with ``close_code``."""
    state = _state(ws)
    state.metrics.error(code)
    _count_ws(state, ws, close_code)
    payload = json.loads(ErrorMessage(code=code, message=message, fatal=True).dumps())
    if retry_after is not None:
        payload["retry_after"] = retry_after
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await ws.send_text(json.dumps(payload))
        await ws.close(close_code)


async def authorize_websocket(ws: WebSocket, *, admin: bool = False) -> Principal | None:
    """The principal of an accepted WebSocket, or None after refusing it (error + close)."""
    try:
        principal = _authenticate(ws, admin=admin)
    except (Unauthorized, Forbidden) as exc:
        _LOGGER.warning("websocket %s refused: %s: %s", ws.url.path, exc.code, exc.message)
        close = CLOSE_UNAUTHORIZED if isinstance(exc, Unauthorized) else CLOSE_FORBIDDEN
        await refuse_websocket(ws, exc.code, exc.message, close)
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

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


async def claim_session(ws: WebSocket) -> SessionSlot | None:
    """Admit an accepted streaming WebSocket: its key, its rate, a free session slot.

    Returns the held slot, or None after the client got an error message and a close.
    """
    principal = await authorize_websocket(ws)
    if principal is None:
        return None
    state = _state(ws)
    refused = state.limits.admit_session(principal.limit_key)
    if refused is not None:
        _LOGGER.warning("session refused for %s: %s (%s limit)", principal.key_id,
                        refused.code, refused.scope)
        await refuse_websocket(ws, refused.code, refused.message, CLOSE_TRY_AGAIN,
                               retry_after=refused.retry_after)
        return None
    _count_ws(state, ws, 101)
    return SessionSlot(state, principal)


async def admit_follower(ws: WebSocket) -> Principal | None:
    """Admit an accepted admin WebSocket (e.g. live status): the admin key and the rate."""
    principal = await authorize_websocket(ws, admin=True)
    if principal is None:
        return None
    refused = _state(ws).limits.admit_request(principal.limit_key)
    if refused is not None:
        _LOGGER.warning("status follower refused for %s: %s (%s limit)", principal.key_id,
                        refused.code, refused.scope)
        await refuse_websocket(ws, refused.code, refused.message, CLOSE_TRY_AGAIN,
                               retry_after=refused.retry_after)
        return None
    _count_ws(_state(ws), ws, 101)
    return principal
