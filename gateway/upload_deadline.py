"""A request body that stalls is cut off: 408 ``upload_timeout``, then the connection closes.

uvicorn bounds the time between requests (keep-alive) but not the time a request's body
takes to arrive: a client that sends headers and part of a body, then nothing, would hold
its connection and a request task forever. :class:`UploadDeadline` (pure ASGI, outermost)
gives every read of the body ``timeout_s``; past it the client gets the one JSON error
shape and the app reading the body sees the client gone. A body that keeps coming, however
slowly, is not cut (``max_upload_bytes`` bounds its size).
"""

from __future__ import annotations

import asyncio
import json
import logging
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from voicemesh.http import error_body

__all__ = ["UploadDeadline"]

_LOGGER = logging.getLogger(__name__)


class UploadDeadline:
    """ASGI middleware: each read of an HTTP request body must come within ``timeout_s``."""

    def __init__(self, app: ASGIApp, timeout_s: float) -> None:
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, answering 408 for it if its body stalls."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        answered = False
        started = False
        body_done = False

        async def receive_in_time() -> Message:
            nonlocal answered, body_done
            if answered:
                return {"type": "http.disconnect"}
            if body_done:
                # The body is in: a later receive() waits for the client to leave (a
                # streamed answer listens for that), which may rightly take long.
                return await receive()
            try:
                async with asyncio.timeout(self.timeout_s):
                    message = await receive()
                body_done = message["type"] != "http.request" or not message.get("more_body")
                return message
            except TimeoutError:
                answered = True
                if not started:
                    await self._answer_timeout(scope, send)
                return {"type": "http.disconnect"}  # the app stops reading: the client is gone

        async def send_once(message: Message) -> None:
            nonlocal started
            if answered:
                return  # the 408 went out; what the app answers after it is dropped
            started = started or message["type"] == "http.response.start"
            await send(message)

        await self.app(scope, receive_in_time, send_once)

    async def _answer_timeout(self, scope: Scope, send: Send) -> None:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        request_id = headers.get("x-request-id") or uuid.uuid4().hex[:16]
        message = f"the request body stalled: nothing came for {self.timeout_s:g} s"
        _LOGGER.warning("request %s failed: upload_timeout: %s", request_id, message)
        body = json.dumps(error_body("upload_timeout", message, request_id)).encode()
        response_headers: list[tuple[bytes, bytes]] = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"connection", b"close"),
            (b"x-request-id", request_id.encode()),
        ]
        start: dict[str, Any] = {
            "type": "http.response.start",
            "status": 408,
            "headers": response_headers,
        }
        await send(start)
        await send({"type": "http.response.body", "body": body})
