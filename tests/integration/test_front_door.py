"""``voicemesh up --with-nginx``: real nginx in front of the real embedded mesh.

Everything goes through nginx on its own loopback port: a shared clip streamed over
the WebSocket upgrade (at ``/ws/transcribe`` and at the specification's
``/v1/asr/stream``), the live status feed, the ASR file route, the OpenAI upload
route, OpenAI speech (streamed, then transcribed back), the control panel, the body
limit (413) and the per-address rate limit (429), both of which nginx answers in the
gateway's JSON error shape.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from client.streaming import stream_audio
from tests.harness import clip_named, error_rate, free_port, stream_errors
from tests.integration.test_scaling import EmbeddedMesh
from voicemesh.audio_files import load_clip_16k
from voicemesh.mesh.plan import port_is_free
from voicemesh.mesh.state import pid_alive

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

JFK = clip_named("whisper-jfk.wav")
GATEWAY_UPLOAD_LIMIT = 2 * 1024 * 1024
"""The gateway's upload limit in this mesh; nginx's body limit is this plus 1 MiB."""
API_RATE_PER_S = 2
API_BURST = 4


class FrontDoorMesh(EmbeddedMesh):
    """The embedded mesh with nginx in front, in a home of its own."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.nginx_port = free_port()
        self.env.update(
            {
                "VOICEMESH_GATEWAY_MAX_UPLOAD_BYTES": str(GATEWAY_UPLOAD_LIMIT),
                "VOICEMESH_NGINX_API_RATE_PER_S": str(API_RATE_PER_S),
                "VOICEMESH_NGINX_API_BURST": str(API_BURST),
            }
        )

    @property
    def front(self) -> str:
        """nginx's base URL."""
        return f"http://127.0.0.1:{self.nginx_port}"

    def nginx_state(self) -> dict[str, Any]:
        """The runner's record of the nginx process."""
        return next(s for s in self.state()["services"] if s["name"] == "nginx")


@pytest.fixture(scope="module")
def front_door(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FrontDoorMesh]:
    """``voicemesh up --with-nginx`` for the module, ``voicemesh down`` after."""
    mesh = FrontDoorMesh(tmp_path_factory.mktemp("front-door-home"))
    up = mesh.cli(
        "up",
        "--port",
        str(mesh.port),
        "--with-nginx",
        "--nginx-port",
        str(mesh.nginx_port),
        "--no-gpu",
        check=False,
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        assert any(
            line.split()[:3] == ["front", "door", mesh.front]
            for line in up.stdout.splitlines()
            if line.strip()
        ), up.stdout
        mesh.wait_routes(1)
        yield mesh
    finally:
        mesh.cli("down", check=False)


def test_nginx_runs_supervised_as_this_user(front_door: FrontDoorMesh) -> None:
    nginx = front_door.nginx_state()
    assert nginx["kind"] == "nginx" and nginx["port"] == front_door.nginx_port
    assert pid_alive(nginx["pid"])
    assert os.stat(f"/proc/{nginx['pid']}").st_uid == os.getuid()
    status = front_door.cli("status", check=False)
    assert status.returncode == 0, status.stdout
    assert any(line.startswith("nginx") and " ok " in line for line in status.stdout.splitlines())


async def test_a_clip_streams_through_nginx(front_door: FrontDoorMesh) -> None:
    ws_url = f"ws://127.0.0.1:{front_door.nginx_port}/ws/transcribe"
    result = await stream_audio(ws_url, load_clip_16k(JFK.path), language="en")
    assert not stream_errors(result), stream_errors(result)
    assert result.of_type("ready")[0]["backend"].startswith("http://127.0.0.1:")
    assert result.of_type("final"), result.messages
    assert error_rate(JFK.text, result.transcript) <= 15, result.transcript


async def test_the_specifications_stream_path_upgrades_through_nginx(
    front_door: FrontDoorMesh,
) -> None:
    ws_url = f"ws://127.0.0.1:{front_door.nginx_port}/v1/asr/stream"
    audio = load_clip_16k(JFK.path)
    result = await stream_audio(ws_url, audio, language="en", realtime=False)
    assert not result.of_type("error"), result.of_type("error")
    assert result.of_type("ready") and result.of_type("final"), result.messages
    assert error_rate(JFK.text, result.transcript) <= 15, result.transcript


def test_the_asr_transcribe_route_through_nginx(front_door: FrontDoorMesh) -> None:
    response = httpx.post(
        f"{front_door.front}/v1/asr/transcribe",
        files={"audio": ("jfk.wav", JFK.path.read_bytes(), "audio/wav")},
        data={"response_format": "txt"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    assert error_rate(JFK.text, response.text) <= 15, response.text


async def test_status_feed_upgrades_through_nginx(front_door: FrontDoorMesh) -> None:
    url = f"ws://127.0.0.1:{front_door.nginx_port}/v1/ws/status"
    async with websockets.connect(url) as ws:
        message = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert message["type"] in ("status", "status_update"), message


def test_upload_within_the_limit_is_transcribed(front_door: FrontDoorMesh) -> None:
    with open(JFK.path, "rb") as audio:
        response = httpx.post(
            f"{front_door.front}/v1/audio/transcriptions",
            files={"file": ("jfk.wav", audio, "audio/wav")},
            data={"model": "whisper-1"},
            timeout=120,
        )
    assert response.status_code == 200, response.text
    assert error_rate(JFK.text, response.json()["text"]) <= 15
    # The request id nginx made travels to the gateway and back.
    assert len(response.headers["x-request-id"]) == 32


def test_speech_streams_through_nginx_and_transcribes_back(front_door: FrontDoorMesh) -> None:
    text = "Hello from the front door of the voice mesh."
    with httpx.stream(
        "POST",
        f"{front_door.front}/v1/audio/speech",
        timeout=120,
        json={"model": "tts-1", "input": text, "voice": "alloy", "response_format": "wav"},
    ) as response:
        assert response.status_code == 200, response.read()
        # Streamed as it is made: chunked, no Content-Length to wait for.
        assert response.headers.get("transfer-encoding") == "chunked"
        assert "content-length" not in response.headers
        assert response.headers["content-type"].startswith("audio/wav")
        audio = b"".join(response.iter_bytes())
    assert audio[:4] == b"RIFF" and len(audio) > 16000
    # The same front door transcribes it back: the words survive the round trip.
    heard = httpx.post(
        f"{front_door.front}/v1/audio/transcriptions",
        timeout=120,
        files={"file": ("speech.wav", audio, "audio/wav")},
        data={"model": "whisper-1", "language": "en"},
    )
    assert heard.status_code == 200, heard.text
    assert error_rate(text, heard.json()["text"]) <= 25, heard.json()["text"]


def test_oversized_upload_gets_413_from_nginx(front_door: FrontDoorMesh) -> None:
    body = b"\0" * (GATEWAY_UPLOAD_LIMIT + 2 * 1024 * 1024)
    response = httpx.post(
        f"{front_door.front}/v1/audio/transcriptions",
        files={"file": ("big.wav", body, "audio/wav")},
        data={"model": "whisper-1"},
        timeout=60,
    )
    assert response.status_code == 413, response.text
    error = response.json()["error"]
    assert error["code"] == "payload_too_large"
    assert error["request_id"] == response.headers["x-request-id"]
    assert "nosniff" in response.headers.get("x-content-type-options", "")


def test_control_panel_is_served_compressed_with_security_headers(
    front_door: FrontDoorMesh,
) -> None:
    response = httpx.get(f"{front_door.front}/", headers={"Accept-Encoding": "gzip"}, timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "<title>" in response.text and "VoiceMesh" in response.text.split("<title>")[1]
    assert response.headers.get("content-encoding") == "gzip"
    assert response.headers["x-frame-options"] == "DENY"
    assert "default-src 'self'" in response.headers["content-security-policy"]


def test_api_responses_are_not_compressed(front_door: FrontDoorMesh) -> None:
    response = httpx.get(
        f"{front_door.front}/health", headers={"Accept-Encoding": "gzip"}, timeout=10
    )
    assert response.status_code == 200
    assert response.json()["service"] == "gateway"
    assert "content-encoding" not in response.headers


def test_metrics_only_for_allowed_addresses(front_door: FrontDoorMesh) -> None:
    allowed = httpx.get(f"{front_door.front}/metrics", timeout=10)
    assert allowed.status_code == 200
    assert "voicemesh" in allowed.text
    # Another loopback address is not on the allow list (127.0.0.1 and ::1 only).
    transport = httpx.HTTPTransport(local_address="127.0.0.2")
    with httpx.Client(transport=transport, timeout=10) as other:
        refused = other.get(f"{front_door.front}/metrics")
    assert refused.status_code == 403


async def test_rate_limit_answers_429(front_door: FrontDoorMesh) -> None:
    async with httpx.AsyncClient(timeout=20) as client:
        responses = await asyncio.gather(
            *[client.get(f"{front_door.front}/v1/admin/mode") for _ in range(20)]
        )
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    # At most the burst plus what the rate refilled meanwhile gets through.
    assert 1 <= codes.count(200) <= API_BURST + 1 + API_RATE_PER_S * 2, codes
    refused = next(r for r in responses if r.status_code == 429)
    assert refused.json()["error"]["code"] == "rate_limited"
    assert refused.headers["retry-after"] == "1"
    # The streaming route has its own zone: a session still opens right after.
    async with websockets.connect(f"ws://127.0.0.1:{front_door.nginx_port}/ws/transcribe") as ws:
        assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"


def test_down_stops_nginx(front_door: FrontDoorMesh) -> None:
    pid = front_door.nginx_state()["pid"]
    down = front_door.cli("down", check=False)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not pid_alive(pid)
    assert port_is_free("127.0.0.1", front_door.nginx_port)
