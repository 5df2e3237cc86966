"""The gateway's one HTTP forward-with-failover: every HTTP route that reaches a backend.

:func:`route` sends one :class:`BackendCall` to the replicas a routing function
chooses, in order. A replica that cannot be reached, times out or answers 5xx
(translated by :func:`voicemesh.errors.backend_errors` and :func:`send_call`) is
skipped and the same bytes go to the next; the skip is counted and published as a
``failover`` event. A replica that is full (:class:`~voicemesh.errors.Busy`) is
alive, so it stays in routing; any other failure holds it out for a while. A 2xx
or 4xx answer is returned as it is: a 4xx is the caller's mistake, which another
replica would refuse just the same.

:func:`respond` passes the answer through (streamed when the backend streams) with
headers naming who served it (``X-VoiceMesh-Backend``, ``X-VoiceMesh-Failover``);
:func:`request_record` accounts for the request (stats, metrics, event, log line);
:func:`forward` is the three together. The WebSocket stream keeps its own loop
(:mod:`gateway.stream`), since it replays audio to the next backend.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from gateway.state import GatewayState
from voicemesh.errors import (
    BadRequest,
    Busy,
    EngineUnavailable,
    InternalTokenRequired,
    UnknownField,
    VoiceMeshError,
    backend_errors,
)
from voicemesh.registry import ReplicaInfo

_LOGGER = logging.getLogger(__name__)

Choose = Callable[[list[ReplicaInfo]], list[ReplicaInfo]]
"""A routing function: the replicas to try for a call, in order."""

TTS_HEADERS = (
    "content-type",
    "x-voicemesh-engine",
    "x-voicemesh-voice",
    "x-voicemesh-voice-name",
    "x-voicemesh-speaker-id",
    "x-voicemesh-model",
    "x-voicemesh-sample-rate",
    "x-voicemesh-format",
    "x-voicemesh-duration",
    "x-voicemesh-synthesis-time",
    "x-voicemesh-rtf",
    "x-voicemesh-stream",
    "x-voicemesh-cache",
    "x-voicemesh-approximate",
    "x-voicemesh-fallback",
)
"""Headers of a TTS backend's answer (``tts_vits``, ``tts_clone``) that reach the client."""


@dataclass
class BackendCall:
    """One request to send to a backend replica (the same bytes to each replica tried)."""

    method: str
    path: str
    request_id: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    stream: bool = False
    headers: dict[str, str] | None = None
    """Extra headers (e.g. the caller's key identity for ``tts_clone``)."""
    files: dict[str, tuple[str, bytes, str]] | None = None
    """Multipart files (the form fields go in ``data``)."""
    data: dict[str, str] | None = None


@dataclass
class Routed:
    """A backend's response, who gave it and after how many failovers."""

    response: httpx.Response
    replica: ReplicaInfo
    failovers: int

    async def aclose(self) -> None:
        """Release the response (its connection goes back to the gateway's pool)."""
        await self.response.aclose()


def error_code(response: httpx.Response) -> str | None:
    """The ``code`` of a backend's JSON error, if it sent one."""
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


def error_message(response: httpx.Response) -> str:
    """The message of a backend's JSON error, or the start of its body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


async def send_call(
    client: httpx.AsyncClient, replica: ReplicaInfo, call: BackendCall
) -> httpx.Response:
    """Send ``call`` to ``replica``; EngineUnavailable (or Busy) when it cannot serve."""
    url = f"{replica.url}{call.path}"
    request = client.build_request(
        call.method,
        url,
        json=call.json,
        params=call.params,
        files=call.files,
        data=call.data,
        headers={**(call.headers or {}), "X-Request-ID": call.request_id},
    )
    with backend_errors(url):
        response = await client.send(request, stream=call.stream)
    if response.status_code == InternalTokenRequired.status_code:
        await response.aread()
        if error_code(response) == InternalTokenRequired.code:
            # This gateway's token is not the engine's: a misconfigured replica, not the
            # client's fault; try another, and never pass the engine's 401 on as the client's.
            await response.aclose()
            raise EngineUnavailable(
                f"{url} refused this gateway's internal token (VOICEMESH_INTERNAL_TOKEN "
                "differs between the gateway and this engine)",
                code="backend_error",
            )
    if response.status_code >= 500:
        await response.aread()
        await response.aclose()
        message = f"{url} answered {response.status_code}: {error_message(response)}"
        if error_code(response) == Busy.code:
            raise Busy(message)
        raise EngineUnavailable(message, code="backend_error")
    return response


def count_failover(
    state: GatewayState,
    request_id: str,
    failed: ReplicaInfo,
    following: ReplicaInfo,
    exc: EngineUnavailable,
    *,
    kind: str,
) -> None:
    """Make a failover visible: a metric by reason and a ``failover`` event."""
    state.metrics.count("failover", exc.code)
    state.metrics.failovers.labels(reason=exc.code).inc()
    state.events.publish(
        "failover",
        kind=kind,
        request_id=request_id,
        **{"from": failed.url},
        to=following.url,
        reason=exc.code,
    )


async def route(
    state: GatewayState, call: BackendCall, choose: Choose, *, service: str, kind: str
) -> Routed:
    """Send ``call`` to the replicas ``choose`` picks, in order, failing over on 'unavailable'.

    ``service`` names the backends in the ``no_backend`` error; ``kind`` is the
    request kind failover events carry (``tts``, ``transcription``).
    """
    candidates = state.view.route(choose)
    last_error = f"no {service} replica is ready (none registered, draining, or model unloaded)"
    failovers = 0
    for index, replica in enumerate(candidates):
        state.view.assign(replica)
        try:
            response = await send_call(state.http, replica, call)
        except EngineUnavailable as exc:
            last_error = exc.message
            if not isinstance(exc, Busy):  # a busy replica is alive: keep it in routing
                state.view.mark_failed(replica)
            _LOGGER.warning(
                "request %s: %s failed: %s: %s",
                call.request_id,
                replica.url,
                exc.code,
                exc.message,
            )
            if index + 1 < len(candidates):
                failovers += 1
                count_failover(
                    state, call.request_id, replica, candidates[index + 1], exc, kind=kind
                )
            continue
        finally:
            state.view.release(replica)
        return Routed(response, replica, failovers)
    raise EngineUnavailable(
        f"no {service} backend could serve the request: {last_error}", code="no_backend"
    )


def served_by_headers(routed: Routed, passed: Iterable[str]) -> dict[str, str]:
    """The backend's headers named in ``passed`` (lower case), plus who served the request."""
    names = set(passed)
    headers = {k: v for k, v in routed.response.headers.items() if k.lower() in names}
    headers["X-VoiceMesh-Backend"] = routed.replica.url
    if routed.failovers:
        headers["X-VoiceMesh-Failover"] = str(routed.failovers)
    return headers


async def respond(
    routed: Routed, passed: Iterable[str], extra_headers: dict[str, str] | None = None
) -> Response:
    """The backend's answer as the client's; streamed through when the backend streams."""
    response = routed.response
    headers = {**served_by_headers(routed, passed), **(extra_headers or {})}
    media = headers.pop("content-type", None) or response.headers.get("content-type")
    if not response.is_stream_consumed and response.headers.get("x-voicemesh-stream"):

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await routed.aclose()

        return StreamingResponse(
            body(), status_code=response.status_code, headers=headers, media_type=media
        )
    try:
        content = await response.aread()
    finally:
        await routed.aclose()
    return Response(content, status_code=response.status_code, headers=headers, media_type=media)


@dataclass
class RequestRecord:
    """What the log line and the ``request_completed`` event say about one request."""

    status: int = 500
    routed: Routed | None = None
    event: dict[str, Any] = field(default_factory=dict)

    def served(self, routed: Routed) -> None:
        """The backend answered: its status and who it was."""
        self.routed = routed
        self.status = routed.response.status_code


@contextlib.asynccontextmanager
async def request_record(
    state: GatewayState, what: str, request_id: str, **event: Any
) -> AsyncIterator[RequestRecord]:
    """Account for one forwarded request however it ends: stats, metrics, event, log line."""
    started = time.perf_counter()
    record = RequestRecord(event=event)
    try:
        yield record
    except VoiceMeshError as exc:
        record.status = exc.status_code
        raise
    finally:
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        routed = record.routed
        backend = routed.replica.url if routed else None
        failovers = routed.failovers if routed else 0
        event = dict(record.event)
        # The model that served it, else the one asked for (no replica served it).
        requested = event.pop("model", None)
        model = (routed.replica.model if routed else None) or requested
        if requested is not None and requested != model:
            event["requested_model"] = requested
        state.record_request(
            what,
            request_id=request_id,
            model=model,
            status=record.status,
            latency_ms=latency_ms,
            **event,
            backend=backend,
            failovers=failovers,
        )
        _LOGGER.info(
            "request %s: %s %s via %s in %.0f ms (%d failovers)",
            request_id,
            what,
            record.status,
            backend,
            latency_ms,
            failovers,
        )


async def forward(
    state: GatewayState,
    what: str,
    call: BackendCall,
    choose: Choose,
    *,
    service: str,
    kind: str,
    passed: Iterable[str],
    **event: Any,
) -> Response:
    """Route ``call``, pass the answer through and account for it (``what``: the stats kind)."""
    async with request_record(state, what, call.request_id, **event) as record:
        routed = await route(state, call, choose, service=service, kind=kind)
        record.served(routed)
        return await respond(routed, passed)


async def refuse_unknown_form_fields(request: Request, fields: Iterable[str]) -> None:
    """UnknownField (422) naming the form fields of ``request`` that are not in ``fields``."""
    form = await request.form()  # already parsed for the parameters: this reads the cache
    allowed = list(fields)
    unknown = sorted(set(form.keys()) - set(allowed))
    if unknown:
        raise UnknownField(
            f"unknown form field(s): {', '.join(unknown)}; this route takes {', '.join(allowed)}"
        )


async def json_body(request: Request) -> dict[str, Any]:
    """The request's body as a JSON object, or BadRequest ``bad_json``."""
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be a JSON object", code="bad_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="bad_json")
    return body
