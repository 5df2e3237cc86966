"""``voicemesh probe URL``: the healthcheck the images run (no curl in a slim image)."""

from __future__ import annotations

import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tests.harness import REPO, free_port

pytestmark = pytest.mark.service


class _Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/health" else 503)
        self.end_headers()

    def log_message(self, *_args: object) -> None:
        return


@pytest.fixture
def server() -> Iterator[str]:
    """A loopback server: 200 on /health, 503 elsewhere."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def probe(url: str) -> subprocess.CompletedProcess[str]:
    """Run ``voicemesh probe`` as a healthcheck would."""
    return subprocess.run(
        [sys.executable, "-m", "voicemesh.cli", "probe", url, "--timeout", "2"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_probe_exit_codes(server: str) -> None:
    assert probe(f"{server}/health").returncode == 0
    unhealthy = probe(f"{server}/draining")
    assert unhealthy.returncode == 1 and "HTTP 503" in unhealthy.stderr
    down = probe(f"http://127.0.0.1:{free_port()}/health")
    assert down.returncode == 1 and "ConnectError" in down.stderr
