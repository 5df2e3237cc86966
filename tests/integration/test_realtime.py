"""``WS /v1/realtime`` through a gateway with API keys, driven by the official ``openai`` SDK.

A gateway of this module's own joins the session mesh's Redis (real detector, CPU STT
replica) with a client key, so every session here authenticates the way the SDK does
it (``Authorization: Bearer``).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import websockets

from tests.harness import (
    REPO,
    ServiceProcess,
    clip_named,
    error_rate,
    normalize,
    offline_transcript,
)
from tests.harness import start_routing_gateway as start_gateway
from tests.integration.conftest import Mesh
from tests.realtime_sdk import COMPLETED, DELTA, pcm16_base64, sdk_client, transcribe
from voicemesh.audio import resample
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

KEY = "realtime-key"
JFK = clip_named("whisper-jfk.wav")
LJ = clip_named("coqui-tts-LJ001-0001.wav")
WER_MARGIN = 1.0
"""The streaming bound of ``test_stream_through_gateway.py``: points above offline."""
READ_S = 30.0


@pytest.fixture(scope="module")
def gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    """A gateway on the mesh's Redis that wants a client key."""
    env = {
        "VOICEMESH_REDIS_URL": mesh.redis.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([KEY]),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    process = start_gateway(env, tmp_path_factory.mktemp("realtime-gateway"))
    try:
        yield process
    finally:
        process.stop()


def assert_within_streaming_bound(clip: Any, transcript: str) -> None:
    streamed = error_rate(clip.text, transcript)
    offline = error_rate(clip.text, offline_transcript(clip))
    print(f"{clip.file}: realtime {streamed:.1f} offline {offline:.1f} | {transcript}")
    assert streamed <= offline + WER_MARGIN, (transcript, streamed, offline)


@pytest.mark.parametrize(("clip", "rate"), [(JFK, 24000), (LJ, 16000)], ids=["24k", "16k"])
async def test_server_vad_turns_are_transcribed_within_the_streaming_bound(
    gateway: ServiceProcess, clip: Any, rate: int
) -> None:
    result = await transcribe(gateway.url, KEY, load_clip_16k(clip.path), rate=rate)
    assert result.errors == []
    first = result.events[0][1]
    assert first["type"] == "session.created" and first["session"]["type"] == "transcription"
    updated = result.of_type("session.updated")[0]["session"]["audio"]["input"]
    assert updated["format"] == {"type": "audio/pcm", "rate": rate}
    assert_within_streaming_bound(clip, result.transcript)
    # Each turn: speech_started, deltas, speech_stopped, committed, completed, one item id.
    for done in result.of_type(COMPLETED):
        item = done["item_id"]
        kinds = [e["type"] for _, e in result.events if e.get("item_id") == item]
        assert kinds[0] == "input_audio_buffer.speech_started", kinds
        assert kinds[-3:] == [
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
            COMPLETED,
        ], kinds
        # The deltas spell the stable text: the transcript's start (a final may revise a word).
        deltas = normalize(
            "".join(e["delta"] for e in result.of_type(DELTA) if e["item_id"] == item)
        )
        start = normalize(done["transcript"])[: len(deltas)]
        assert error_rate(" ".join(start), " ".join(deltas)) <= 34, (deltas, done["transcript"])
    assert result.of_type(DELTA), "no partial text arrived before the finals"


async def test_manual_commit_gives_one_turn_with_every_word(gateway: ServiceProcess) -> None:
    result = await transcribe(gateway.url, KEY, load_clip_16k(LJ.path), turn_detection=None)
    assert result.errors == []
    assert result.of_type("input_audio_buffer.speech_started") == []
    committed = result.of_type("input_audio_buffer.committed")
    completed = result.of_type(COMPLETED)
    assert len(committed) == 1 and len(completed) == 1, result.events
    assert completed[0]["item_id"] == committed[0]["item_id"]
    assert_within_streaming_bound(LJ, completed[0]["transcript"])


async def next_event(conn: Any, kind: str) -> dict[str, Any]:
    """The next event of type ``kind`` (others are skipped)."""
    while True:
        event = (await asyncio.wait_for(conn.recv(), READ_S)).to_dict()
        if event["type"] == kind:
            return event


async def test_bad_and_unsupported_events_get_openai_errors_and_the_session_goes_on(
    gateway: ServiceProcess,
) -> None:
    client = sdk_client(gateway.url, KEY)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        await next_event(conn, "session.created")
        sends: list[tuple[dict[str, Any], str, str]] = [
            ({"type": "response.create", "event_id": "e1"}, "unsupported_event", "response.create"),
            (
                {"type": "conversation.item.create", "event_id": "e2", "item": {}},
                "unsupported_event",
                "conversation.item.create",
            ),
            ({"type": "input_audio_buffer.append", "audio": "%%%"}, "bad_audio", "base64"),
            ({"type": "input_audio_buffer.commit"}, "empty_audio", "empty"),
            (
                {"type": "session.update", "session": {"type": "realtime"}},
                "feature_unavailable",
                "realtime",
            ),
            (
                {
                    "type": "session.update",
                    "session": {
                        "type": "transcription",
                        "audio": {"input": {"format": {"type": "audio/pcmu"}}},
                    },
                },
                "bad_encoding",
                "audio/pcmu",
            ),
        ]
        for event, code, named in sends:
            await conn.send(event)  # type: ignore[arg-type]  # some are invalid on purpose
            error = (await next_event(conn, "error"))["error"]
            assert (error["type"], error["code"]) == ("invalid_request_error", code), error
            assert named in error["message"], error
            assert error["event_id"] == event.get("event_id"), error
        # Still served (at the default 24 kHz): a turn transcribed after all that.
        audio = resample(load_clip_16k(JFK.path), 16000, 24000)
        await conn.input_audio_buffer.append(audio=pcm16_base64(audio))
        await conn.input_audio_buffer.commit()
        done = await next_event(conn, COMPLETED)
        assert "fellow" in done["transcript"].lower()


async def test_the_beta_client_is_answered_in_its_spelling(gateway: ServiceProcess) -> None:
    """``client.beta.realtime`` sends ``OpenAI-Beta: realtime=v1`` and the flat session."""
    client = sdk_client(gateway.url, KEY)
    beta = client.beta.realtime.connect(model="whisper-1", extra_query={"intent": "transcription"})
    async with beta as conn:

        async def read() -> dict[str, Any]:
            event: dict[str, Any] = json.loads(await asyncio.wait_for(conn.recv_bytes(), READ_S))
            return event

        assert (await read())["type"] == "transcription_session.created"
        await conn.transcription_session.update(
            session={
                "input_audio_format": "pcm16",
                "input_audio_transcription": {"model": "whisper-1", "language": "en"},
                "turn_detection": {"type": "server_vad", "silence_duration_ms": 700},
            }
        )
        updated = await read()
        assert updated["type"] == "transcription_session.updated"
        session = updated["session"]
        assert session["input_audio_format"] == "pcm16"
        assert session["input_audio_transcription"]["language"] == "en"
        assert session["turn_detection"]["silence_duration_ms"] == 700
        audio = resample(load_clip_16k(JFK.path), 16000, 24000)
        await conn.input_audio_buffer.append(audio=pcm16_base64(audio))
        await conn.input_audio_buffer.commit()
        while (event := await read())["type"] != COMPLETED:
            assert event["type"] != "error", event
        assert "fellow" in event["transcript"].lower()


@pytest.mark.parametrize("key", ["wrong-key", None])
async def test_a_wrong_or_missing_key_is_refused(gateway: ServiceProcess, key: str | None) -> None:
    url = gateway.url.replace("http://", "ws://") + "/v1/realtime?intent=transcription"
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with websockets.connect(url, additional_headers=headers) as ws:
        error = json.loads(await asyncio.wait_for(ws.recv(), READ_S))
        with pytest.raises(websockets.ConnectionClosed):
            await asyncio.wait_for(ws.recv(), READ_S)
    assert error["type"] == "error" and error["error"]["code"] == "unauthorized", error
    assert ws.close_code == 4401
    # The SDK hears it as an error event, then the connection ends.
    client = sdk_client(gateway.url, "wrong-key")
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        event = (await asyncio.wait_for(conn.recv(), READ_S)).to_dict()
        assert event["type"] == "error" and event["error"]["code"] == "unauthorized"
        with pytest.raises((websockets.ConnectionClosed, openai.OpenAIError)):
            await asyncio.wait_for(conn.recv(), READ_S)


def readme_snippet() -> str:
    """The Python block of the README's "OpenAI Realtime transcription" section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## OpenAI Realtime transcription", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


def test_the_readme_snippet_transcribes_through_the_gateway(gateway: ServiceProcess) -> None:
    code = readme_snippet()
    assert "http://127.0.0.1:8080/v1" in code and '"my-key"' in code
    code = code.replace("http://127.0.0.1:8080/v1", f"{gateway.url}/v1").replace("my-key", KEY)
    run = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    transcript = run.stdout.strip().splitlines()[-1]
    assert_within_streaming_bound(JFK, transcript)
