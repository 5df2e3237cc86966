"""The VoiceMesh error tree.

::

    VoiceMeshError                 base of everything raised on purpose
    ├── BadRequest                 the caller sent something wrong (4xx, never fail over)
    │   ├── AudioNotFound          a synthesized-audio URL that expired or never existed (404)
    │   ├── BadAudio               undecodable audio, wrong frame size, bad sample rate
    │   ├── BenchmarkNotFound      no benchmark run with this id (expired or never made) (404)
    │   ├── BadEvent               (Wyoming, Realtime) an event that cannot be read or acted on
    │   ├── ConfigInvalid          a configuration reload read settings or keys that fail (422)
    │   ├── EmptyText              text to speak with no word in it (422)
    │   ├── FeatureUnavailable     an option the mesh has no engine for, e.g. diarization (422)
    │   ├── IdleTimeout            a client that sent nothing for the idle limit (408)
    │   ├── ModelConflict          a known model no replica can use for this request (409)
    │   ├── ModelInUse             a model that cannot be unloaded now: open sessions, the
    │   │                          mesh's last loaded STT model, or loading (409)
    │   ├── PayloadTooLarge        a frame or body over its limit (413)
    │   ├── ReferenceRejected      a cloning reference that cannot make a voice (422)
    │   ├── UnknownField           a form field the route does not take (422)
    │   ├── UnknownModel           a model name or path that cannot be resolved (404)
    │   └── VoiceNotFound          no cloned voice with this id for this caller (404)
    ├── Unauthorized               no API key, or a key that is not configured (401)
    │   └── InternalTokenRequired  (engine) a call without the gateway's internal token (401)
    ├── Forbidden                  a valid key without the rights the route needs (403)
    ├── BenchmarkRunning           a benchmark run is under way already (409, ``run_id``,
    │                              ``retry_after``)
    ├── LimitExceeded              a caller over its request rate (429, ``retry_after``)
    ├── ModelAssetError            a model package is missing or a prepared file is corrupt
    ├── PlanError                  (CLI) ``voicemesh up`` cannot build the mesh asked for
    └── EngineUnavailable          a backend cannot serve now (fail over on this only)
        ├── BackendClosed          the backend closed or reset the connection
        ├── BackendTimeout         the backend stalled past its timeout
        ├── Busy                   the backend is alive but full: try another, keep it routed
        ├── ModelUnloaded          the replica is up but its model is unloaded (or loading)
        └── RegistryUnavailable    Redis cannot be reached

    ConnectionLost                 (client side) the server went away mid-stream; reconnect
    PartialShed                    (engine inside) a partial decode dropped unrun under load

    VoiceMeshClientError           (voicemesh.client) what the Python client raises
    ├── ApiError                   the gateway answered an error: code, message, status,
    │   │                          request_id, retry_after (mapped in voicemesh.client.errors)
    │   ├── BadInputError          400, 413, 422: the request itself is wrong; do not retry
    │   ├── UnauthorizedError      401 / WS close 4401: no key, or a key that is not valid
    │   ├── ForbiddenError         403 / WS close 4403: a valid key without the rights
    │   ├── NotFoundError          404: no such model, voice, audio or route
    │   ├── ConflictError          409: a model or voice that cannot serve this request
    │   ├── BusyError              429, 503 busy / no_backend, WS close 1013: retry later
    │   └── ServerError            any other 5xx: the mesh failed on this request
    └── TransportError             the gateway cannot be reached, or the connection broke
        └── StreamLostError        a stream's connection dropped; reconnecting gave up

Boundaries translate library exceptions (httpx, websockets, redis) into these with
``raise ... from exc`` so callers only ever catch this tree; :func:`backend_errors`
is the one place that does it for httpx and websockets. Every ``code`` a client can
receive is listed, with its HTTP status, in ``docs/errors.md``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class VoiceMeshError(Exception):
    """Base of every error VoiceMesh raises on purpose."""

    code = "internal_error"
    status_code = 500

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class BadRequest(VoiceMeshError):
    """The caller sent something the service cannot accept."""

    code = "bad_request"
    status_code = 400


class IdleTimeout(BadRequest):
    """A client sent nothing for its idle limit; its connection is closed."""

    code = "idle_timeout"
    status_code = 408


class AudioNotFound(BadRequest):
    """A ``/v1/tts/audio/...`` URL whose audio expired or never existed."""

    code = "audio_not_found"
    status_code = 404


class BadAudio(BadRequest):
    """Audio that cannot be decoded or does not match its declared format."""

    code = "bad_audio"
    status_code = 400


class BenchmarkNotFound(BadRequest):
    """No benchmark run with this id: it never existed, or it expired or was dropped."""

    code = "benchmark_not_found"
    status_code = 404


class BadEvent(BadRequest):
    """A Wyoming or Realtime event the server cannot read or act on (the connection goes on)."""

    code = "bad_event"


class ConfigInvalid(BadRequest):
    """``POST /v1/admin/config/reload`` read settings or a keys file that cannot be used;
    nothing of it was applied."""

    code = "config_invalid"
    status_code = 422


class EmptyText(BadRequest):
    """Text to speak that holds no word (a validation error, as pydantic's are)."""

    code = "empty_text"
    status_code = 422


class FeatureUnavailable(BadRequest):
    """An option the request turns on that no engine of the mesh provides (never ignored)."""

    code = "feature_unavailable"
    status_code = 422


class ModelConflict(BadRequest):
    """A model the mesh knows, but no replica holds it for this kind of request."""

    code = "model_cannot_serve"
    status_code = 409


class ModelInUse(BadRequest):
    """A model the admin asked to unload that cannot go now (sessions on it, the last one)."""

    code = "model_in_use"
    status_code = 409


class PayloadTooLarge(BadRequest):
    """A frame or a body larger than the configured limit."""

    code = "payload_too_large"
    status_code = 413


class ReferenceRejected(BadRequest):
    """A reference recording that cannot make a voice profile (too short, silent, clipped...)."""

    code = "bad_reference"
    status_code = 422


class UnknownField(BadRequest):
    """A form field the route does not take (a typo would otherwise be silently ignored)."""

    code = "unknown_field"
    status_code = 422


class UnknownModel(BadRequest):
    """A model name or path that does not resolve to files or a known hub name."""

    code = "unknown_model"
    status_code = 404


class VoiceNotFound(BadRequest):
    """No voice with this id belongs to the caller."""

    code = "voice_not_found"
    status_code = 404


class Unauthorized(VoiceMeshError):
    """No key, or a key that is not configured."""

    code = "unauthorized"
    status_code = 401


class InternalTokenRequired(Unauthorized):
    """A call to an engine without the internal token only the gateway holds."""

    code = "internal_token_required"


class Forbidden(VoiceMeshError):
    """A valid key without the rights the route needs (a client key on an admin route)."""

    code = "forbidden"
    status_code = 403


class BenchmarkRunning(VoiceMeshError):
    """A benchmark run is under way (one at a time, so that runs do not measure each other)."""

    code = "benchmark_running"
    status_code = 409

    def __init__(self, message: str, *, run_id: str, retry_after: int) -> None:
        super().__init__(message)
        self.run_id = run_id
        """The id of the run under way."""
        self.retry_after = retry_after
        """Whole seconds until it should be over (the ``Retry-After`` header)."""


class LimitExceeded(VoiceMeshError):
    """A caller over its request rate; try again after ``retry_after`` seconds."""

    code = "rate_limited"
    status_code = 429

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int, scope: str, key_id: str
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        """Whole seconds to wait (the ``Retry-After`` header)."""
        self.scope = scope
        """Which limit refused: ``key`` or ``total``."""
        self.key_id = key_id
        """The refused caller's key fingerprint."""


class ModelAssetError(VoiceMeshError):
    """A model package is not installed, or a prepared model file fails its check."""

    code = "model_asset_error"
    status_code = 500


class PlanError(VoiceMeshError):
    """The requested mesh cannot be built (unknown service, bad scale, busy port).

    Raised by :mod:`voicemesh.mesh.plan`; the CLI prints its message and exits 2. It
    never reaches an HTTP client, so it has no code of its own.
    """


class EngineUnavailable(VoiceMeshError):
    """A backend cannot serve right now; the only error the gateway fails over on."""

    code = "engine_unavailable"
    status_code = 503


class BackendClosed(EngineUnavailable):
    """The backend closed or reset the connection."""

    code = "backend_closed"


class BackendTimeout(EngineUnavailable):
    """The backend sent nothing for longer than its timeout."""

    code = "backend_timeout"
    status_code = 504


class Busy(EngineUnavailable):
    """The backend is alive but has no free slot: try another replica, keep this one routed."""

    code = "busy"

    def __init__(
        self, message: str, *, code: str | None = None, retry_after: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.retry_after = retry_after
        """Seconds the backend asked the caller to wait, when it said."""


class ModelUnloaded(EngineUnavailable):
    """The replica runs but holds no model (unloaded by the admin, or loading): fail over."""

    code = "model_unloaded"


class RegistryUnavailable(EngineUnavailable):
    """The Redis registry cannot be reached."""

    code = "registry_unavailable"


class ConnectionLost(Exception):
    """Client side: the WebSocket went away while the source was still capturing."""


class VoiceMeshClientError(Exception):
    """Base of every error the Python client (:mod:`voicemesh.client`) raises."""


class ApiError(VoiceMeshClientError):
    """The gateway refused a client's request, in its one error shape."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        status: int | None = None,
        request_id: str | None = None,
        retry_after: float | None = None,
        details: dict[str, object] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}" + (f" (request {request_id})" if request_id else ""))
        self.code = code
        """The error code (``docs/errors.md``)."""
        self.message = message
        """The gateway's sentence saying what was wrong."""
        self.status = status
        """HTTP status, or the WebSocket close code of a refused stream."""
        self.request_id = request_id
        """The id the gateway logged the request under (``X-Request-ID``)."""
        self.retry_after = retry_after
        """Seconds to wait before trying again, when the gateway said."""
        self.details = details or {}
        """Any other field of the error body (``reasons``, ``limit``...)."""


class BadInputError(ApiError):
    """The request is wrong (400, 413, 422): an unknown field, bad audio, a value out of range."""


class UnauthorizedError(ApiError):
    """No API key, or a key the gateway does not know (401, WS close 4401)."""


class ForbiddenError(ApiError):
    """A valid key without the rights the route needs (403, WS close 4403)."""


class NotFoundError(ApiError):
    """No such model, voice, audio URL or route (404)."""


class ConflictError(ApiError):
    """A model or voice the mesh knows but cannot use for this request (409)."""


class BusyError(ApiError):
    """No capacity now (busy, rate limited, no backend): retry after ``retry_after`` s."""


class ServerError(ApiError):
    """The mesh failed on this request (a 5xx other than "not now")."""


class TransportError(VoiceMeshClientError):
    """The gateway could not be reached, or the connection to it broke."""


class StreamLostError(TransportError):
    """A stream's connection dropped and reconnecting gave up."""


class PartialShed(Exception):
    """Inside an STT replica: a partial decode waited so long for a worker that it was
    dropped unrun; the session asks again with fresher audio. Never reaches a client."""


@contextlib.contextmanager
def backend_errors(url: str, *, doing: str = "reach") -> Iterator[None]:
    """Translate httpx and websockets transport failures talking to ``url`` into the tree.

    A timeout becomes :class:`BackendTimeout`; a refused, reset or closed connection
    (or a refused WebSocket handshake) :class:`BackendClosed`; ``doing`` names the step
    in its message ("reach", "read the reply of", ...). Errors of the tree pass through.
    """
    import httpx
    import websockets

    try:
        yield
    except VoiceMeshError:
        raise
    except (httpx.TimeoutException, TimeoutError) as exc:
        raise BackendTimeout(f"{url} timed out: {exc!r}") from exc
    except (
        httpx.TransportError,
        websockets.ConnectionClosed,
        websockets.InvalidHandshake,
        OSError,
    ) as exc:
        raise BackendClosed(f"cannot {doing} {url}: {exc!r}") from exc
