"""The Python client's pure parts: error mapping, status shapes, stream times, audio input."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator

import httpx
import numpy as np
import pytest

from tests.harness import REPO
from voicemesh.client import (
    BadInputError,
    BusyError,
    ConflictError,
    NotFoundError,
    ServerError,
    StatusEvent,
    UnauthorizedError,
    VoiceCandidate,
)
from voicemesh.client.audio_input import audio_blocks
from voicemesh.client.calls import candidate_body, synthesize_body
from voicemesh.client.errors import error_from_http, error_from_ws
from voicemesh.client.models import Comparison, Synthesis
from voicemesh.client.streaming import shift_times

pytestmark = pytest.mark.unit


def answer(status: int, code: str, **extra: object) -> httpx.Response:
    body = {"error": {"code": code, "message": f"{code} happened", "request_id": "r-1", **extra}}
    return httpx.Response(status, json=body, headers={"x-request-id": "r-1"})


@pytest.mark.parametrize(
    ("status", "code", "cls"),
    [
        (400, "undecodable_audio", BadInputError),
        (413, "file_too_large", BadInputError),
        (422, "unknown_field", BadInputError),
        (401, "unauthorized", UnauthorizedError),
        (404, "unknown_model", NotFoundError),
        (409, "model_cannot_serve", ConflictError),
        (503, "no_backend", BusyError),
        (503, "busy", BusyError),
        (500, "internal_error", ServerError),
        (504, "backend_timeout", ServerError),
    ],
)
def test_http_errors_map_to_their_class(status: int, code: str, cls: type) -> None:
    error = error_from_http(answer(status, code))
    assert type(error) is cls
    assert (error.code, error.status, error.request_id) == (code, status, "r-1")
    assert error.message == f"{code} happened"
    assert str(error) == f"{code}: {code} happened (request r-1)"


def test_rate_limited_carries_retry_after_and_the_other_fields() -> None:
    response = answer(429, "rate_limited", retry_after=7, limit="key")
    response.headers["retry-after"] = "7"
    error = error_from_http(response)
    assert isinstance(error, BusyError) and error.retry_after == 7.0
    assert error.details == {"limit": "key"}


def test_an_answer_not_in_the_error_shape_still_becomes_a_typed_error() -> None:
    error = error_from_http(httpx.Response(502, text="<html>Bad Gateway</html>"))
    assert isinstance(error, ServerError) and error.code == "http_error"
    assert "Bad Gateway" in error.message
    framework = error_from_http(httpx.Response(405, json={"detail": "Method Not Allowed"}))
    assert isinstance(framework, BadInputError) and framework.message == "Method Not Allowed"


def test_websocket_refusals_map_by_code_and_close_code() -> None:
    busy = error_from_ws(
        {"type": "error", "code": "busy", "message": "full", "fatal": True, "retry_after": 2}, 1013
    )
    assert isinstance(busy, BusyError) and busy.retry_after == 2.0 and busy.status == 1013
    wrong_key = error_from_ws({"type": "error", "code": "unauthorized", "message": "no"}, 4401)
    assert isinstance(wrong_key, UnauthorizedError)
    assert isinstance(error_from_ws({"code": "internal_error", "message": "x"}, 1011), ServerError)


def test_status_messages_read_in_either_shape() -> None:
    flat = StatusEvent.from_message({"type": "status_update", "ts": 12.5, "mode": "cpu"})
    wrapped = StatusEvent.from_message(
        {"type": "status_update", "timestamp": "2026-11-30T22:00:00Z", "data": {"mode": "cpu"}}
    )
    assert flat.data == wrapped.data == {"mode": "cpu"}
    assert (flat.timestamp, wrapped.timestamp) == (12.5, "2026-11-30T22:00:00Z")


def test_stream_times_shift_with_their_segments_and_words() -> None:
    final = {
        "type": "final",
        "start": 0.5,
        "end": 2.0,
        "segments": [
            {"start": 0.5, "end": 2.0, "words": [{"word": "hi", "start": 0.5, "end": 0.9}]}
        ],
    }
    shift_times(final, 10.0)
    assert (final["start"], final["end"]) == (10.5, 12.0)
    segment = final["segments"][0]  # type: ignore[index]
    assert segment["start"] == 10.5 and segment["words"][0]["end"] == 10.9


def test_request_bodies_leave_unset_options_out() -> None:
    body = synthesize_body("Hi.", {"voice_id": 0, "volume_db": 3.0})
    assert body == {"text": "Hi.", "voice_id": 0, "volume_db": 3.0, "format": "wav"}
    assert candidate_body("en_US-joe-medium") == {"voice_id": "en_US-joe-medium", "speed": 1.0}
    assert candidate_body({"model": "m", "voice_id": 3, "speed": 1.2}) == {
        "model": "m",
        "voice_id": 3,
        "speed": 1.2,
    }
    with pytest.raises(ValueError, match="pitch"):
        candidate_body({"voice_id": 0, "pitch": 2})
    assert VoiceCandidate(voice_id=1).speed == 1.0


def test_synthesis_reads_its_headers() -> None:
    response = httpx.Response(
        200,
        content=b"RIFF....",
        headers={
            "content-type": "audio/wav",
            "x-voicemesh-voice-name": "Jo%C3%ABl",
            "x-voicemesh-sample-rate": "22050",
            "x-voicemesh-speaker-id": "3",
            "x-voicemesh-rtf": "0.21",
        },
    )
    synthesis = Synthesis.from_response(response)
    assert synthesis.voice_name == "Joël" and synthesis.sample_rate == 22050
    assert synthesis.speaker_id == 3 and synthesis.rtf == 0.21 and synthesis.audio == b"RIFF...."


def test_comparison_names_its_preferred_candidate() -> None:
    comparison = Comparison.model_validate(
        {
            "results": [
                {"voice_id": 0, "audio_url": "/a", "preferred": False},
                {"voice_id": 1, "audio_url": "/b", "preferred": True, "new_field": 1},
            ],
            "recommendation": {"for": "rtf", "recommended": 1, "index": 1, "reason": "lowest"},
        }
    )
    assert comparison.preferred is not None and comparison.preferred.audio_url == "/b"
    assert comparison.recommendation.for_ == "rtf"


async def collect(blocks: AsyncIterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([block async for block in blocks])


def test_audio_input_resamples_arrays_and_live_frames_to_16k() -> None:
    tone = np.sin(np.arange(8000) * 2 * np.pi * 440 / 8000).astype(np.float32)  # 1 s at 8 kHz
    array = asyncio.run(collect(audio_blocks(tone, sample_rate=8000, frame_ms=40, realtime=False)))
    assert array.dtype == np.float32 and abs(array.size - 16000) <= 16
    pcm = (tone * 32767).astype("<i2")
    frames = [pcm[i : i + 320].tobytes() for i in range(0, pcm.size, 320)]
    live = asyncio.run(collect(audio_blocks(frames, sample_rate=8000, frame_ms=40, realtime=False)))
    assert abs(live.size - 16000) <= 16
    # The same audio either way: the live path resamples without clicks at frame edges.
    n = min(array.size, live.size)
    assert np.max(np.abs(array[:n] - live[:n])) < 0.01


def test_raw_bytes_are_refused_with_a_hint() -> None:
    with pytest.raises(TypeError, match="iterator of frames"):
        audio_blocks(b"\x00\x00", sample_rate=16000, frame_ms=40, realtime=False)


def test_the_client_imports_no_web_framework_and_no_service() -> None:
    # A client app installs the base package only: no FastAPI, no gateway, no engine.
    code = (
        "import sys, voicemesh.client; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastapi', 'starlette', "
        "'uvicorn', 'gateway', 'client', 'stt_cpu_ws', 'tts_vits', 'faster_whisper', 'redis'}))"
    )
    found = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO
    )
    assert found.stdout.strip() == "[]"


async def test_the_blocking_stream_says_to_use_the_async_client_inside_a_loop() -> None:
    from voicemesh.client import VoiceMeshClient

    with VoiceMeshClient("http://127.0.0.1:9") as vm:
        events = vm.stream(np.zeros(1600, np.float32))
        with pytest.raises(RuntimeError, match="AsyncVoiceMeshClient"):
            next(events)
