"""The gateway's Wyoming server on its own, with no engine behind it.

A real gateway app under uvicorn on loopback (its lifespan starts the Wyoming server)
and the ``wyoming`` package's own ``AsyncTcpClient``. Nothing is registered, so
what is checked is the server itself: it answers ``describe``, survives bad events
with ``error`` events, refuses a transcription it has no backend for, and turns away
a client from outside its allowed networks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx
import pytest
from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.info import Describe, Info

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import ThreadedServer, free_port

pytestmark = [pytest.mark.service, pytest.mark.timeout(60)]

READ_S = 10.0


def settings(**overrides: object) -> GatewaySettings:
    """A gateway with no Redis, no backends and a Wyoming port of its own."""
    base: dict[str, object] = {
        "redis_url": "",
        "wyoming_port": free_port(),
        "probe_interval_s": 0,
        "control_panel_dir": None,
    }
    return GatewaySettings(**{**base, **overrides})  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gateway() -> Iterator[tuple[ThreadedServer, GatewaySettings]]:
    """A gateway serving Wyoming on loopback to loopback clients (the default)."""
    config = settings()
    with ThreadedServer(create_app(config)) as server:
        yield server, config


async def read(client: AsyncTcpClient) -> Event:
    event = await asyncio.wait_for(client.read_event(), READ_S)
    assert event is not None, "the server closed the connection"
    return event


async def test_health_says_where_wyoming_listens(
    gateway: tuple[ThreadedServer, GatewaySettings],
) -> None:
    server, config = gateway
    async with httpx.AsyncClient() as http:
        health = (await http.get(f"{server.url}/health")).json()
    assert health["wyoming"] == f"tcp://127.0.0.1:{config.wyoming_port}"


async def test_describe_is_answered_with_both_programs(
    gateway: tuple[ThreadedServer, GatewaySettings],
) -> None:
    _, config = gateway
    async with AsyncTcpClient("127.0.0.1", config.wyoming_port) as client:
        await client.write_event(Describe().event())
        event = await read(client)
    assert Info.is_type(event.type)
    info = Info.from_event(event)
    (asr,) = info.asr
    (tts,) = info.tts
    assert asr.supports_transcript_streaming and tts.supports_synthesize_streaming
    assert asr.models == [] and tts.voices == []  # nothing registered behind this gateway


async def test_bad_events_get_errors_and_the_connection_goes_on(
    gateway: tuple[ThreadedServer, GatewaySettings],
) -> None:
    _, config = gateway
    async with AsyncTcpClient("127.0.0.1", config.wyoming_port) as client:
        assert client._writer is not None
        client._writer.write(b"this is not json\n")
        await client._writer.drain()
        first = Error.from_event(await read(client))
        await client.write_event(Event(type="detect", data={"names": ["ok_nabu"]}))
        second = Error.from_event(await read(client))
        await client.write_event(AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0").event())
        third = Error.from_event(await read(client))
        await client.write_event(AudioStart(rate=16000, width=7, channels=1).event())
        fourth = Error.from_event(await read(client))
        await client.write_event(Event(type="synthesize", data={}))
        fifth = Error.from_event(await read(client))
        await client.write_event(Describe().event())
        answer = await read(client)
    assert first.code == "bad_event"
    assert second.code == "unsupported_event" and "detect" in second.text
    assert third.code == "bad_event" and "before audio-start" in third.text
    assert fourth.code == "bad_audio"
    assert fifth.code == "bad_event" and "text" in fifth.text
    assert Info.is_type(answer.type)


async def test_a_transcription_without_a_backend_is_an_error_then_the_end(
    gateway: tuple[ThreadedServer, GatewaySettings],
) -> None:
    _, config = gateway
    async with AsyncTcpClient("127.0.0.1", config.wyoming_port) as client:
        await client.write_event(Transcribe(language="en").event())
        await client.write_event(AudioStart(rate=16000, width=2, channels=1).event())
        await client.write_event(
            AudioChunk(rate=16000, width=2, channels=1, audio=b"\0\0" * 1600).event()
        )
        await client.write_event(AudioStop().event())
        error = Error.from_event(await read(client))
        closed = await asyncio.wait_for(client.read_event(), READ_S)
    assert error.code == "no_backend"
    assert closed is None


async def test_an_unknown_model_is_refused_by_name() -> None:
    config = settings()
    with ThreadedServer(create_app(config)):
        async with AsyncTcpClient("127.0.0.1", config.wyoming_port) as client:
            await client.write_event(Transcribe(name="no-such-model").event())
            error = Error.from_event(await read(client))
    assert error.code == "unknown_model" and "no-such-model" in error.text


async def test_a_client_outside_the_allowed_networks_is_turned_away() -> None:
    config = settings(wyoming_allowed_networks=["192.168.1.0/24"])
    with ThreadedServer(create_app(config)):
        async with AsyncTcpClient("127.0.0.1", config.wyoming_port) as client:
            await client.write_event(Describe().event())
            error = Error.from_event(await read(client))
            closed = await asyncio.wait_for(client.read_event(), READ_S)
    assert error.code == "forbidden" and "127.0.0.1" in error.text
    assert closed is None


async def test_a_taken_port_leaves_the_gateway_up_and_says_so() -> None:
    blocker = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = blocker.sockets[0].getsockname()[1]
    try:
        with ThreadedServer(create_app(settings(wyoming_port=port))) as server:
            async with httpx.AsyncClient() as http:
                health = (await http.get(f"{server.url}/health")).json()
    finally:
        blocker.close()
    assert health["wyoming"].startswith("unavailable: cannot listen on 127.0.0.1:")
