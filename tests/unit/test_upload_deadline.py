"""The stalled-body deadline applies to the body only: a streamed answer that takes longer
than the deadline, while Starlette listens for the client leaving, is sent whole."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.routing import Route

from gateway.upload_deadline import UploadDeadline

pytestmark = pytest.mark.unit

DEADLINE_S = 0.2
CHUNKS = 6


async def slow_echo(request: Request) -> StreamingResponse:
    body = await request.body()

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(CHUNKS):
            await asyncio.sleep(DEADLINE_S / 2)  # 3 deadlines in all
            yield body

    return StreamingResponse(chunks(), media_type="application/octet-stream")


async def test_a_streamed_answer_longer_than_the_body_deadline_is_not_cut() -> None:
    app = UploadDeadline(
        Starlette(routes=[Route("/echo", slow_echo, methods=["POST"])]), DEADLINE_S
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        response = await client.post("/echo", content=b"abc")
    assert response.status_code == 200
    assert response.content == b"abc" * CHUNKS
