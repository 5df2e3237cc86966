"""A backend that answers slowly: a WebSocket relay on loopback that delays what comes back.

:class:`DelayingProxy` runs in a thread of its own in front of a real STT replica. It
relays each session's frames to the replica at once, and the replica's messages back to
the gateway after ``delay_s`` (0 until a case sets it), in order; ``GET /health`` answers
200, as a live replica's does. A case registers it as one more STT replica: sessions the
gateway routes there see their backend go slow when the delay is set (tc/netem is not
needed for that).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import websockets
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


class DelayingProxy(threading.Thread):
    """A relay to ``upstream`` (``ws://host:port``) that holds replies ``delay_s`` back."""

    def __init__(self, upstream: str) -> None:
        super().__init__(daemon=True)
        self.upstream = upstream.rstrip("/")
        self.delay_s = 0.0
        self.sessions = 0
        self.port = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Future[None] | None = None

    @property
    def url(self) -> str:
        """The base URL the proxy registers under."""
        return f"http://127.0.0.1:{self.port}"

    def _health(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.startswith("/health"):
            return connection.respond(200, '{"status": "ok"}\n')
        return None

    async def _relay(self, client: ServerConnection) -> None:
        self.sessions += 1
        path = client.request.path if client.request is not None else "/"
        async with websockets.connect(f"{self.upstream}{path}", max_size=None) as server:
            held: asyncio.Queue[tuple[float, Any]] = asyncio.Queue()

            async def forward() -> None:
                async for message in client:
                    await server.send(message)

            async def receive() -> None:
                async for message in server:
                    held.put_nowait((time.monotonic() + self.delay_s, message))

            async def deliver() -> None:
                while True:
                    due, message = await held.get()
                    await asyncio.sleep(max(0.0, due - time.monotonic()))
                    await client.send(message)

            tasks = [asyncio.create_task(t()) for t in (forward, receive, deliver)]
            try:
                await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stopping = self._loop.create_future()
        async with serve(
            self._relay, "127.0.0.1", 0, max_size=None, process_request=self._health
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stopping

    def run(self) -> None:
        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(self._serve())

    def __enter__(self) -> DelayingProxy:
        self.start()
        if not self._ready.wait(10):
            raise RuntimeError("the delaying proxy did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stopping is not None:
            self._loop.call_soon_threadsafe(self._stopping.set_result, None)
        self.join(10)
