"""HTTP uploads that lie about their size or stall mid-body are cut off in bounded time.

The gateway runs under a real uvicorn on loopback (no Redis, no backends: nothing here
gets as far as a backend). The clients are raw sockets, since an HTTP library will not
send a body longer than its ``Content-Length`` or stop halfway on purpose. After each,
the gateway still answers another client.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import ThreadedServer

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

READ_TIMEOUT_S = 1.0
BOUND_S = READ_TIMEOUT_S + 5
BOUNDARY = "vmboundary"


@pytest.fixture(scope="module")
def gateway() -> Iterator[ThreadedServer]:
    """The gateway with a 1 s limit on a stalled request body."""
    settings = GatewaySettings(
        redis_url="",
        use_detector=False,
        wyoming_enabled=False,
        upload_read_timeout_s=READ_TIMEOUT_S,
    )
    with ThreadedServer(create_app(settings)) as server:
        yield server


def multipart_head(size: int) -> bytes:
    """The start of a multipart form whose ``file`` part is ``size`` bytes of audio."""
    return (
        f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n'
        "Content-Type: audio/wav\r\n\r\n"
    ).encode() + b"\0" * size


def request_head(length: int) -> bytes:
    """Headers of a transcription upload declaring ``length`` bytes of body."""
    return (
        "POST /v1/audio/transcriptions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: multipart/form-data; boundary={BOUNDARY}\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


def read_until_closed(sock: socket.socket, bound_s: float) -> bytes:
    """Everything the server sends until it closes the connection (fails past ``bound_s``)."""
    sock.settimeout(bound_s)
    received = b""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return received  # closed with our bytes unread: a reset, not a FIN
        if not chunk:
            return received
        received += chunk
    raise AssertionError(f"the connection was still open after {bound_s} s: {received!r}")


def assert_still_serving(server: ThreadedServer) -> None:
    """Another client is answered at once."""
    response = httpx.get(f"{server.url}/health", timeout=5)
    assert response.status_code == 200, response.text


def test_a_body_longer_than_its_content_length_is_cut_off(gateway: ThreadedServer) -> None:
    declared = 300
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        began = time.monotonic()
        sock.sendall(request_head(declared) + multipart_head(200_000))
        received = read_until_closed(sock, BOUND_S)
    assert time.monotonic() - began < BOUND_S
    # The first request (the declared bytes) may be answered 4xx before the close; the rest
    # is read as a next request that is not HTTP, and the server drops the connection.
    assert received == b"" or received.startswith(b"HTTP/1.1 4"), received[:300]
    assert_still_serving(gateway)


def test_a_body_that_stalls_is_answered_408_and_closed(gateway: ThreadedServer) -> None:
    with socket.create_connection(("127.0.0.1", gateway.port), timeout=10) as sock:
        began = time.monotonic()
        sock.sendall(request_head(100_000) + multipart_head(1000))  # then nothing more
        received = read_until_closed(sock, BOUND_S)
        waited = time.monotonic() - began
    assert READ_TIMEOUT_S <= waited < BOUND_S, waited
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), received[:300]
    error = json.loads(body)["error"]
    assert error["code"] == "upload_timeout"
    assert error["request_id"]
    assert_still_serving(gateway)
