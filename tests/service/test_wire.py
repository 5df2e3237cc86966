"""``voicemesh.wire.ClientSocket`` on a real WebSocket: a tiny app in-process."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from voicemesh.errors import VoiceMeshError
from voicemesh.metrics import ServiceMetrics
from voicemesh.protocol import (
    CLOSE_NORMAL,
    CLOSE_TRY_AGAIN,
    FlushMessage,
    ReadyMessage,
    StartMessage,
    StopMessage,
)
from voicemesh.wire import ClientSocket

pytestmark = pytest.mark.service


def echo_app(metrics: ServiceMetrics, seen: list[Any]) -> FastAPI:
    """Reports every item ``receive()`` yields back to the client, until ``stop``."""
    app = FastAPI()

    @app.websocket("/echo")
    async def echo(ws: WebSocket) -> None:
        await ws.accept()
        client = ClientSocket(ws, metrics=metrics, name="test")
        await client.send(ReadyMessage(session_id="s", engine="e", device="cpu", model="m"))
        async for item in client.receive():
            seen.append(item)
            if isinstance(item, bytes):
                await client.send({"type": "audio", "bytes": len(item)})
            elif isinstance(item, StopMessage):
                await client.send({"type": "stopping"})
                await client.close(CLOSE_NORMAL)
                return
            else:
                await client.send(item)
        seen.append("disconnected")

    @app.websocket("/refuse")
    async def refuse(ws: WebSocket) -> None:
        await ws.accept()
        await ClientSocket(ws, metrics=metrics).refuse(
            "busy", "full", CLOSE_TRY_AGAIN, retry_after=2
        )

    @app.websocket("/detector")
    async def detector(ws: WebSocket) -> None:
        # The detector answers bad control messages in its own (seed) format.
        await ws.accept()
        client = ClientSocket(ws)

        async def seed_error(exc: VoiceMeshError) -> None:
            await client.send({"error": exc.message, "code": exc.code})

        async for _ in client.receive(seed_error):
            pass

    return app


@pytest.fixture
def metrics() -> ServiceMetrics:
    """A fresh registry per test."""
    return ServiceMetrics("wire-test")


def test_audio_and_control_messages_come_out_parsed(metrics: ServiceMetrics) -> None:
    seen: list[Any] = []
    with TestClient(echo_app(metrics, seen)) as http, http.websocket_connect("/echo") as ws:
        assert ws.receive_json()["type"] == "ready"
        ws.send_text('{"type": "start", "sample_rate": 48000, "encoding": "pcm_f32le"}')
        assert ws.receive_json() == {
            "type": "start",
            "sample_rate": 48000,
            "encoding": "pcm_f32le",
            "channels": 1,
        }
        ws.send_bytes(b"\0\0" * 160)
        assert ws.receive_json() == {"type": "audio", "bytes": 320}
        ws.send_text("<flush>")
        assert ws.receive_json()["type"] == "flush"
        ws.send_text('{"type": "stop"}')
        assert ws.receive_json() == {"type": "stopping"}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == CLOSE_NORMAL
    assert isinstance(seen[0], StartMessage) and seen[0].sample_rate == 48000
    assert seen[1] == b"\0\0" * 160
    assert isinstance(seen[2], FlushMessage) and isinstance(seen[3], StopMessage)


def test_a_bad_control_message_is_an_error_and_the_loop_goes_on(
    metrics: ServiceMetrics,
) -> None:
    seen: list[Any] = []
    with TestClient(echo_app(metrics, seen)) as http, http.websocket_connect("/echo") as ws:
        ws.receive_json()
        ws.send_text("not json")
        error = ws.receive_json()
        assert error == {
            "type": "error",
            "code": "bad_message",
            "fatal": False,
            "message": "text frames must be JSON control messages or '<flush>'",
        }
        ws.send_text('{"type": "start", "sample_rate": 5}')
        error = ws.receive_json()
        assert error["code"] == "bad_message" and "sample_rate" in error["message"]
        ws.send_bytes(b"\1\0")
        assert ws.receive_json() == {"type": "audio", "bytes": 2}
    assert seen[0] == b"\1\0"
    text = metrics.render()[0].decode()
    assert 'voicemesh_errors_total{code="bad_message",service="wire-test"} 2.0' in text


def test_the_loop_ends_when_the_client_goes_away(metrics: ServiceMetrics) -> None:
    seen: list[Any] = []
    with TestClient(echo_app(metrics, seen)) as http:
        with http.websocket_connect("/echo") as ws:
            ws.receive_json()
            ws.send_bytes(b"\0\0")
            ws.receive_json()
        for _ in range(100):
            if seen[-1:] == ["disconnected"]:
                break
            time.sleep(0.02)
    assert seen == [b"\0\0", "disconnected"]


def test_refuse_sends_a_fatal_error_then_closes_with_the_code(metrics: ServiceMetrics) -> None:
    with TestClient(echo_app(metrics, [])) as http, http.websocket_connect("/refuse") as ws:
        assert ws.receive_json() == {
            "type": "error",
            "code": "busy",
            "message": "full",
            "fatal": True,
            "retry_after": 2,
        }
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert closed.value.code == CLOSE_TRY_AGAIN
    assert 'code="busy"' in metrics.render()[0].decode()


def test_a_service_can_report_bad_messages_in_its_own_format(metrics: ServiceMetrics) -> None:
    with TestClient(echo_app(metrics, [])) as http, http.websocket_connect("/detector") as ws:
        ws.send_text('{"no": "type"}')
        assert ws.receive_json() == {
            "error": "control message needs a 'type' field",
            "code": "bad_message",
        }


async def test_sends_from_many_tasks_stay_whole_and_a_gone_client_is_no_error() -> None:
    class RecordingSocket:
        """Records frames; a send yields to the loop midway, as a real socket may."""

        def __init__(self) -> None:
            self.frames: list[str] = []
            self.inside = 0
            self.overlapped = False
            self.gone = False

        async def send_text(self, text: str) -> None:
            if self.gone:
                raise RuntimeError("websocket is closed")
            self.inside += 1
            self.overlapped |= self.inside > 1
            await asyncio.sleep(0)
            self.frames.append(text)
            self.inside -= 1

    sock = RecordingSocket()
    client = ClientSocket(sock)  # type: ignore[arg-type]
    await asyncio.gather(*(client.send({"n": i}) for i in range(20)))
    assert len(sock.frames) == 20 and not sock.overlapped
    sock.gone = True
    await client.error("internal_error", "boom", fatal=True)
    assert client.open is False
    await client.send({"after": "gone"})  # a no-op, not an error
    assert len(sock.frames) == 20
