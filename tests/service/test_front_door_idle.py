"""The other streaming front doors close idle clients too: OpenAI Realtime and Wyoming.

A gateway with a 1 s idle limit and its Wyoming server on a free port, in front of the
real ``stt_cpu_ws`` app, on loopback in threads of this process. A Realtime client that
sends no event gets an ``error`` event (OpenAI's shape, ``idle_timeout``) and close 4408;
a Wyoming client that sends nothing gets Wyoming's ``error`` event and its connection
closed. A client that keeps talking is not idle.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.info import Describe, Info

from tests.harness import free_port, stt_behind_gateway
from voicemesh.protocol import CLOSE_IDLE

pytestmark = [pytest.mark.service, pytest.mark.timeout(120)]

IDLE_S = 1.0


@pytest.fixture(scope="module")
def gateway() -> Iterator[dict[str, str]]:
    port = free_port()
    values = {"idle_ready_s": IDLE_S, "idle_session_s": IDLE_S, "wyoming_port": port}
    with stt_behind_gateway({}, values) as urls:
        yield {**urls, "wyoming_port": str(port)}


def test_an_idle_realtime_client_is_closed(gateway: dict[str, str]) -> None:
    url = gateway["gateway"] + "/v1/realtime?intent=transcription"
    with connect(url, open_timeout=30) as ws:
        assert json.loads(ws.recv(timeout=30))["type"] == "session.created"
        began = time.monotonic()
        events = []
        try:
            while True:
                events.append(json.loads(ws.recv(timeout=30)))
        except ConnectionClosed:
            pass
        assert ws.close_code == CLOSE_IDLE
    assert IDLE_S <= time.monotonic() - began < IDLE_S + 5
    assert events[-1]["type"] == "error" and events[-1]["error"]["code"] == "idle_timeout"


def test_a_talking_realtime_client_is_not_idle(gateway: dict[str, str]) -> None:
    url = gateway["gateway"] + "/v1/realtime?intent=transcription"
    with connect(url, open_timeout=30) as ws:
        ws.recv(timeout=30)
        update = {"type": "session.update", "session": {"type": "transcription"}}
        for _ in range(4):  # an event every 0.5 s for 2 s: twice the idle limit
            ws.send(json.dumps(update))
            time.sleep(IDLE_S / 2)
        ws.send(json.dumps(update))
        reply = json.loads(ws.recv(timeout=10))
        assert reply["type"] != "error", reply


async def test_an_idle_wyoming_client_is_closed(gateway: dict[str, str]) -> None:
    client = AsyncTcpClient("127.0.0.1", int(gateway["wyoming_port"]))
    await client.connect()
    try:
        await client.write_event(Describe().event())
        info = await asyncio.wait_for(client.read_event(), 30)
        assert info is not None and Info.is_type(info.type)
        began = time.monotonic()
        event = await asyncio.wait_for(client.read_event(), 30)
        assert event is not None and Error.is_type(event.type), event
        assert Error.from_event(event).code == "idle_timeout"
        assert await asyncio.wait_for(client.read_event(), 10) is None  # closed
        assert IDLE_S <= time.monotonic() - began < IDLE_S + 5
    finally:
        await client.disconnect()
