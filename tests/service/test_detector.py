"""The speech detector (``stt_tiny_ws``) in-process: Silero per frame, tiny.en confirmation.

One app with the real Silero VAD and the bundled Whisper tiny.en serves the module;
``WS /ws/detect`` is driven through ``fastapi.testclient.TestClient``.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Iterator

import anyio
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from starlette.testclient import WebSocketTestSession

from stt_tiny_ws.app import SttTinySettings, create_app
from tests.harness import Clip, load_manifest

pytestmark = pytest.mark.service

RATE = 16000
FRAME_SAMPLES = 512  # 32 ms: one Silero window per frame
FRAME_S = FRAME_SAMPLES / RATE
CONFIRM_TIMEOUT_S = 60.0
SPEECH = next(c for c in load_manifest() if c.file == "pocketsphinx-librivox-0880.wav")
DETECTION_KEYS = {"speech_detected", "probability", "t"}


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The detector app with real Silero and tiny.en, loaded once for the module."""
    # The host's VOICEMESH_* were cleared in pytest_configure (tests/conftest.py).
    with TestClient(create_app(SttTinySettings(redis_url=""))) as test_client:
        yield test_client


def _pcm16(samples: np.ndarray) -> bytes:
    return samples.astype("<i2").tobytes()


def _clip_pcm(clip: Clip, trailing_silence_s: float) -> bytes:
    samples, rate = soundfile.read(clip.path, dtype="int16")
    assert rate == RATE
    return _pcm16(np.concatenate([samples, np.zeros(int(trailing_silence_s * RATE), np.int16)]))


def _send_frames(ws: WebSocketTestSession, pcm: bytes) -> int:
    """Send ``pcm`` in 32 ms frames; returns how many complete windows were sent."""
    step = FRAME_SAMPLES * 2
    for i in range(0, len(pcm), step):
        ws.send_bytes(pcm[i : i + step])
    return len(pcm) // step


def _receive_json(ws: WebSocketTestSession, timeout_s: float) -> dict:
    """The next JSON message from the server, or fail after ``timeout_s``.

    ``WebSocketTestSession.receive`` blocks forever; this waits on the same stream
    inside the client's portal with a deadline.
    """

    async def receive() -> dict:
        with anyio.fail_after(timeout_s):
            return dict(await ws._send_rx.receive())

    try:
        message = ws.portal.call(receive)
    except TimeoutError:
        pytest.fail(f"no message from the detector within {timeout_s} s")
    assert message["type"] == "websocket.send", message
    return dict(json.loads(message["text"]))


def _collect(
    ws: WebSocketTestSession, detections: int, *, until_speech_end: bool = False
) -> tuple[list[dict], list[dict]]:
    """Read until ``detections`` per-frame messages (and a speech_end, if asked) arrived."""
    frames: list[dict] = []
    events: list[dict] = []
    deadline = time.monotonic() + CONFIRM_TIMEOUT_S

    def done() -> bool:
        ended = any(e["type"] == "speech_end" for e in events)
        started = sum(e["type"] == "speech_start" for e in events)
        ends = sum(e["type"] == "speech_end" for e in events)
        # Every speech_start is answered by a speech_end once its segment is decoded.
        return len(frames) >= detections and ends >= started and (ended or not until_speech_end)

    while not done():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"timed out: {len(frames)}/{detections} detections, events {events}")
        message = _receive_json(ws, remaining)
        (events if "type" in message else frames).append(message)
    return frames, events


def _assert_seed_format(frames: list[dict]) -> None:
    for i, message in enumerate(frames):
        assert set(message) == DETECTION_KEYS, message
        assert isinstance(message["speech_detected"], bool)
        assert isinstance(message["probability"], float)
        assert 0.0 <= message["probability"] <= 1.0
        # One message per 32 ms frame, stamped with the stream time at its end.
        assert message["t"] == pytest.approx((i + 1) * FRAME_S, abs=1e-3), (i, message)


def test_health(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["confirm_model"] == "tiny.en"
    assert body["vad"] == "silero"
    assert body["registry"] == "disabled"


def test_speech_clip_gives_detections_and_one_confirmed_utterance(client: TestClient) -> None:
    trailing_s = 1.0
    pcm = _clip_pcm(SPEECH, trailing_s)
    with client.websocket_connect("/ws/detect") as ws:
        sent = _send_frames(ws, pcm)
        frames, events = _collect(ws, sent, until_speech_end=True)

    assert len(frames) == sent
    _assert_seed_format(frames)
    times = [f["t"] for f in frames]
    assert all(a < b for a, b in itertools.pairwise(times))

    speech_frames = [f for f in frames if 0.5 <= f["t"] <= 2.5]
    assert sum(f["speech_detected"] for f in speech_frames) >= 0.8 * len(speech_frames)
    assert max(f["probability"] for f in speech_frames) >= 0.5
    # The last half second of the trailing silence comes after the endpoint.
    tail = [f for f in frames if f["t"] > SPEECH.duration_s + trailing_s - 0.5]
    assert tail
    assert not any(f["speech_detected"] for f in tail), tail

    assert [e["type"] for e in events] == ["speech_start", "speech_end"], events
    start, end = events
    assert 0.0 <= start["t"] < 1.0
    assert end["start"] == pytest.approx(start["t"], abs=1e-3)
    assert start["t"] < end["t"] <= SPEECH.duration_s + 0.05
    assert end["t"] > 2.0
    assert end["confirmed"] is True
    assert "young man" in end["text"].lower()


def test_silence_starts_no_speech(client: TestClient) -> None:
    with client.websocket_connect("/ws/detect") as ws:
        sent = _send_frames(ws, bytes(2 * RATE * 2))  # 2 s of PCM16 zeros
        frames, events = _collect(ws, sent)
    assert events == []
    _assert_seed_format(frames)
    assert not any(f["speech_detected"] for f in frames)
    assert max(f["probability"] for f in frames) < 0.5


def test_white_noise_is_never_confirmed_speech(client: TestClient) -> None:
    rng = np.random.default_rng(1234)
    noise = np.clip(rng.normal(0.0, 0.05, 3 * RATE), -1.0, 1.0)
    samples = np.concatenate([noise * 32767.0, np.zeros(RATE)])  # 1 s silence ends any segment
    with client.websocket_connect("/ws/detect") as ws:
        sent = _send_frames(ws, _pcm16(np.rint(samples)))
        frames, events = _collect(ws, sent)
    _assert_seed_format(frames)
    starts = [e for e in events if e["type"] == "speech_start"]
    ends = [e for e in events if e["type"] == "speech_end"]
    assert len(ends) == len(starts), events
    assert not [e for e in ends if e["confirmed"]], events


def test_odd_length_frame_is_an_error_and_the_socket_keeps_working(client: TestClient) -> None:
    with client.websocket_connect("/ws/detect") as ws:
        ws.send_bytes(b"\x00\x01\x02")
        error = _receive_json(ws, 10.0)
        assert set(error) == {"error", "code"}
        assert error["code"] == "odd_length_frame"
        assert isinstance(error["error"], str) and error["error"]
        ws.send_bytes(bytes(FRAME_SAMPLES * 2))
        detection = _receive_json(ws, 10.0)
    assert set(detection) == DETECTION_KEYS
    # The rejected frame did not move the stream clock.
    assert detection["t"] == pytest.approx(FRAME_S, abs=1e-3)
    assert detection["speech_detected"] is False


def test_garbage_text_frame_is_an_error_and_the_socket_keeps_working(
    client: TestClient,
) -> None:
    with client.websocket_connect("/ws/detect") as ws:
        ws.send_text("this is not a control message")
        error = _receive_json(ws, 10.0)
        assert set(error) == {"error", "code"}
        assert error["code"] == "bad_message"
        assert isinstance(error["error"], str) and error["error"]
        ws.send_bytes(bytes(FRAME_SAMPLES * 2))
        detection = _receive_json(ws, 10.0)
    assert set(detection) == DETECTION_KEYS
    assert detection["t"] == pytest.approx(FRAME_S, abs=1e-3)
