"""The gateway's error shape as the Python client's typed exceptions.

The classes live in :mod:`voicemesh.errors` with the rest of the project's tree
(re-exported here); this module decides which one an answer becomes::

    VoiceMeshClientError            base of everything the client raises
    ├── ApiError                    the gateway answered an error (``code``, ``message``,
    │   │                           ``status``, ``request_id``; ``details`` holds the rest)
    │   ├── BadInputError           400, 413, 422: the request itself is wrong; do not retry
    │   ├── UnauthorizedError       401 / WS close 4401: no key, or a key that is not valid
    │   ├── ForbiddenError          403 / WS close 4403: a valid key without the rights
    │   ├── NotFoundError           404: no such model, voice, audio or route
    │   ├── ConflictError           409: a model or voice that cannot serve this request
    │   ├── BusyError               429, 503 ``busy`` ``no_backend`` ``rate_limited`` (and WS
    │   │                           close 1013): try again after ``retry_after`` seconds
    │   └── ServerError             any other 5xx: the mesh failed on this request
    └── TransportError              the gateway could not be reached, or the connection
        │                           dropped (and, for a stream, reconnecting gave up)
        └── StreamLostError         a stream's connection dropped more often than allowed

Every HTTP error of the gateway is ``{"error": {"code", "message", "request_id"}}``
(``docs/errors.md`` lists the codes); every WebSocket refusal is a ``{"type": "error"}``
message before a close code. :func:`error_from_http` and :func:`error_from_ws` turn
either into the class above that fits.
"""

from __future__ import annotations

import json
from typing import Any

import httpx

from voicemesh.errors import (
    ApiError,
    BadInputError,
    BusyError,
    ConflictError,
    ForbiddenError,
    NotFoundError,
    ServerError,
    StreamLostError,
    TransportError,
    UnauthorizedError,
    VoiceMeshClientError,
)
from voicemesh.protocol import CLOSE_FORBIDDEN, CLOSE_TRY_AGAIN, CLOSE_UNAUTHORIZED

__all__ = [
    "ApiError",
    "BadInputError",
    "BusyError",
    "ConflictError",
    "ForbiddenError",
    "NotFoundError",
    "ServerError",
    "StreamLostError",
    "TransportError",
    "UnauthorizedError",
    "VoiceMeshClientError",
    "error_from_http",
    "error_from_ws",
]

BUSY_CODES = frozenset(
    {"busy", "no_backend", "rate_limited", "draining", "engine_unavailable", "model_unloaded"}
)
"""Codes that mean "not now": a later try (or another replica) can succeed."""


def _class_for(status: int | None, code: str) -> type[ApiError]:
    if code == "unauthorized" or status in (401, CLOSE_UNAUTHORIZED):
        return UnauthorizedError
    if code == "forbidden" or status in (403, CLOSE_FORBIDDEN):
        return ForbiddenError
    if code in BUSY_CODES or status in (429, CLOSE_TRY_AGAIN):
        return BusyError
    if status == 404:
        return NotFoundError
    if status == 409:
        return ConflictError
    if status is not None and 400 <= status < 500:
        return BadInputError
    return ServerError


def _retry_after(body: dict[str, Any], header: str | None) -> float | None:
    for value in (body.get("retry_after"), header):
        try:
            return float(value) if value is not None else None
        except (TypeError, ValueError):
            continue
    return None


def error_from_http(response: httpx.Response) -> ApiError:
    """The typed error for a gateway answer of status 400 or more (its body already read)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict) and "code" in error:
        fields = dict(error)
    elif isinstance(body, dict) and "detail" in body:  # a framework answer of a backend
        fields = {"code": "http_error", "message": str(body["detail"])}
    else:
        text = response.text.strip()[:300] or response.reason_phrase
        fields = {"code": "http_error", "message": text}
    code = str(fields.pop("code"))
    message = str(fields.pop("message", ""))
    request_id = fields.pop("request_id", None) or response.headers.get("x-request-id")
    retry_after = _retry_after(fields, response.headers.get("retry-after"))
    fields.pop("retry_after", None)
    cls = _class_for(response.status_code, code)
    return cls(
        code,
        message,
        status=response.status_code,
        request_id=request_id,
        retry_after=retry_after,
        details=fields,
    )


def error_from_ws(message: dict[str, Any], close_code: int | None = None) -> ApiError:
    """The typed error for a ``{"type": "error"}`` message (and the close code after it)."""
    fields = {k: v for k, v in message.items() if k not in {"type", "code", "message"}}
    code = str(message.get("code", "internal_error"))
    retry_after = _retry_after(fields, None)
    fields.pop("retry_after", None)
    return _class_for(close_code, code)(
        code,
        str(message.get("message", "")),
        status=close_code,
        retry_after=retry_after,
        details=fields,
    )
