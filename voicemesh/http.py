"""HTTP plumbing every FastAPI service shares: request ids, JSON errors, /metrics."""

from __future__ import annotations

import logging
import uuid
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from voicemesh.errors import UnknownField, VoiceMeshError
from voicemesh.metrics import ServiceMetrics

_LOGGER = logging.getLogger(__name__)

HTTP_ERROR_CODES: dict[int, str] = {404: "not_found", 405: "method_not_allowed"}
"""Codes of the errors Starlette raises itself (no such route, wrong method)."""
HTTP_ERROR_OTHER = "http_error"
"""Code of any other ``HTTPException``, with its own status."""
UNAVAILABLE_RETRY_AFTER_S = 1
"""``retry_after`` of a 503 whose error names no wait of its own (a backend down or gone)."""


def error_body(code: str, message: str, request_id: str, **extra: Any) -> dict[str, Any]:
    """The one JSON error shape: ``{"error": {"code", "message", "request_id"}}``."""
    return {"error": {"code": code, "message": message, "request_id": request_id, **extra}}


def _request_id(request: Request) -> str:
    return getattr(request.state, "request_id", None) or uuid.uuid4().hex[:16]


metrics_router = APIRouter()
"""``GET /metrics``: the Prometheus text of the metrics :func:`install_http_basics` was given."""


@metrics_router.get("/metrics", include_in_schema=False)
async def prometheus_metrics(request: Request) -> Response:
    """This process's metrics in the Prometheus text format."""
    metrics: ServiceMetrics = request.app.state.http_metrics
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)


def install_http_basics(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Add request ids, the JSON error handlers and ``GET /metrics`` to ``app``."""
    app.state.http_metrics = metrics
    app.include_router(metrics_router)

    @app.middleware("http")
    async def _with_request_id(request: Request, call_next):  # type: ignore[no-untyped-def]
        request.state.request_id = request.headers.get("x-request-id") or uuid.uuid4().hex[:16]
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    @app.exception_handler(VoiceMeshError)
    async def _voicemesh_error(request: Request, exc: VoiceMeshError) -> JSONResponse:
        rid = _request_id(request)
        _LOGGER.warning("request %s failed: %s: %s", rid, exc.code, exc.message)
        metrics.error(exc.code)
        # "Not now" is said with when to try again: the error's own wait, else a short one.
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is None and exc.status_code == 503:
            retry_after = UNAVAILABLE_RETRY_AFTER_S
        if retry_after is None:
            return JSONResponse(error_body(exc.code, exc.message, rid), status_code=exc.status_code)
        return JSONResponse(
            error_body(exc.code, exc.message, rid, retry_after=retry_after),
            status_code=exc.status_code,
            headers={"Retry-After": str(retry_after)},
        )

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        rid = _request_id(request)
        errors = exc.errors()
        unknown = [e for e in errors if e.get("type") == "extra_forbidden"]
        if unknown:
            # A field the body does not define: refused by name, never silently ignored.
            names = ", ".join(".".join(str(p) for p in e.get("loc", ())[1:]) for e in unknown)
            message = f"unknown field(s) in the request body: {names}"
            metrics.error(UnknownField.code)
            return JSONResponse(error_body(UnknownField.code, message, rid), status_code=422)
        first = errors[0] if errors else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{where}: {first.get('msg', 'invalid request')}"
        metrics.error("validation_error")
        return JSONResponse(error_body("validation_error", message, rid), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        rid = _request_id(request)
        code = HTTP_ERROR_CODES.get(exc.status_code, HTTP_ERROR_OTHER)
        return JSONResponse(error_body(code, str(exc.detail), rid), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        rid = _request_id(request)
        _LOGGER.exception("request %s failed unexpectedly", rid)
        metrics.error("internal_error")
        # Starlette answers an unhandled error outside the middleware that sets the header.
        body = error_body("internal_error", "the service failed on this request", rid)
        return JSONResponse(body, status_code=500, headers={"X-Request-ID": rid})
