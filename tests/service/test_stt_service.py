"""The streaming Whisper service in-process: HTTP file transcription, the WS stream, errors.

One app with the bundled Whisper base on the CPU serves the whole module (the lifespan
loads the model once); requests go through ``fastapi.testclient.TestClient``.
"""

from __future__ import annotations

import io
import itertools
import json
import os
import time
from collections.abc import Iterator
from typing import Any

import anyio
import av
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from starlette.testclient import WebSocketTestSession

from stt_cpu_ws.app import SttCpuSettings
from tests.harness import Clip, error_rate, load_manifest, normalize
from voicemesh.stt.service import create_stt_app

pytestmark = pytest.mark.service

RATE = 16000
FRAME_BYTES = RATE // 10 * 2  # 100 ms of PCM16 mono
RECEIVE_TIMEOUT_S = 60.0
ENGINE_HEADER = "faster-whisper/cpu"


def _clip(name: str) -> Clip:
    return next(c for c in load_manifest() if c.file == name)


JFK = _clip("whisper-jfk.wav")
LIBRIVOX = _clip("pocketsphinx-librivox-0880.wav")
AISHELL = _clip("wenet-aishell-BAC009S0724W0121.wav")


def _pcm16(path: os.PathLike[str]) -> bytes:
    samples, rate = soundfile.read(path, dtype="int16")
    assert rate == RATE, f"{path} is not 16 kHz"
    return samples.astype("<i2").tobytes()


def _frames(pcm: bytes) -> Iterator[bytes]:
    for i in range(0, len(pcm), FRAME_BYTES):
        yield pcm[i : i + FRAME_BYTES]


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    """The stt_cpu_ws app with the real Whisper base, model loaded once for the module."""
    # The host's VOICEMESH_* were cleared in pytest_configure (tests/conftest.py).
    app = create_stt_app(SttCpuSettings(redis_url="", cpu_threads=2))
    with TestClient(app) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def jfk_wav() -> bytes:
    """The JFK clip as the WAV file bytes."""
    return JFK.path.read_bytes()


@pytest.fixture(scope="module")
def jfk_json_text(client: TestClient, jfk_wav: bytes) -> str:
    """The service's transcript of the JFK WAV (response_format json)."""
    response = client.post("/v1/transcribe", files={"file": ("jfk.wav", jfk_wav, "audio/wav")})
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def _post(client: TestClient, data: bytes, filename: str = "clip.wav", **form: str) -> Any:
    files = {"file": (filename, data, "application/octet-stream")}
    return client.post("/v1/transcribe", files=files, data=form)


def _assert_error(response: Any, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert error["code"] == code
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["request_id"], str) and error["request_id"]
    assert error["request_id"] == response.headers["x-request-id"]
    return dict(error)


def _receive_within(ws: WebSocketTestSession, timeout_s: float = RECEIVE_TIMEOUT_S) -> dict:
    """The next ASGI message the server sent, or fail after ``timeout_s``.

    ``WebSocketTestSession.receive`` blocks forever; this waits on the same stream
    inside the client's portal with a deadline.
    """

    async def receive() -> dict:
        with anyio.fail_after(timeout_s):
            return dict(await ws._send_rx.receive())

    try:
        return ws.portal.call(receive)
    except TimeoutError:
        pytest.fail(f"no message from the server within {timeout_s} s")


def _messages_until_close(ws: WebSocketTestSession) -> tuple[list[dict], int]:
    """Every JSON message up to the server's close, and the close code."""
    messages = []
    while True:
        message = _receive_within(ws)
        if message["type"] == "websocket.close":
            return messages, int(message.get("code", 1000))
        messages.append(json.loads(message["text"]))


def _ready(ws: WebSocketTestSession) -> dict:
    message = _receive_within(ws)
    assert message["type"] == "websocket.send"
    ready = json.loads(message["text"])
    assert ready["type"] == "ready"
    return dict(ready)


def _stop(ws: WebSocketTestSession) -> None:
    ws.send_text(json.dumps({"type": "stop"}))


def _finals(messages: list[dict]) -> list[dict]:
    return [m for m in messages if m["type"] == "final"]


def _joined(finals: list[dict]) -> str:
    return " ".join(f["text"] for f in finals)


def _requests_total(client: TestClient, route: str, outcome: str) -> float:
    response = client.get("/metrics")
    assert response.status_code == 200
    total = 0.0
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            if (
                sample.name == "voicemesh_requests_total"
                and sample.labels.get("route") == route
                and sample.labels.get("outcome") == outcome
            ):
                total += sample.value
    return total


# ---------------------------------------------------------------- health


def test_health_reports_the_loaded_cpu_model(client: TestClient) -> None:
    response = client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["model_loaded"] is True
    assert body["device"] == "cpu"
    assert body["engine"] == "faster-whisper"
    assert body["model"] == "base"
    assert body["registry"] == "disabled"
    assert body["service"] == "stt_cpu_ws"


# ---------------------------------------------------------------- POST /v1/transcribe


def test_json_transcript_of_a_wav_file(client: TestClient, jfk_wav: bytes) -> None:
    response = _post(client, jfk_wav, response_format="json")
    assert response.status_code == 200, response.text
    assert response.headers["x-voicemesh-engine"] == ENGINE_HEADER
    body = response.json()
    assert set(body) == {"text"}
    assert "fellow americans" in " ".join(normalize(body["text"]))
    assert error_rate(JFK.text, body["text"]) <= 15


def test_verbose_json_has_ordered_segments_within_the_duration(
    client: TestClient, jfk_wav: bytes
) -> None:
    response = _post(client, jfk_wav, response_format="verbose_json")
    assert response.status_code == 200, response.text
    assert response.headers["x-voicemesh-engine"] == ENGINE_HEADER
    body = response.json()
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == pytest.approx(JFK.duration_s, abs=0.05)
    assert error_rate(JFK.text, body["text"]) <= 15
    assert "words" not in body  # only with word_timestamps=true
    segments = body["segments"]
    assert segments, "verbose_json without segments"
    assert [s["id"] for s in segments] == list(range(len(segments)))
    starts = [s["start"] for s in segments]
    assert all(a < b for a, b in itertools.pairwise(starts)), starts
    for segment in segments:
        assert 0.0 <= segment["start"] <= segment["end"] <= body["duration"] + 0.05, segment
    assert normalize(" ".join(s["text"] for s in segments)) == normalize(body["text"])


def test_subtitles_get_real_segment_times(client: TestClient) -> None:
    clip = _clip("lhotse-2412-153948-0000.wav")
    response = _post(client, clip.path.read_bytes(), response_format="verbose_json")
    segments = response.json()["segments"]
    # Whisper's own timestamps, not one block spanning the whole file.
    assert len(segments) >= 2, segments
    assert 0 < segments[0]["end"] < clip.duration_s - 2, segments


@pytest.mark.parametrize("language", ["xx", "klingon"])
def test_unknown_language_is_a_400_json_error(
    client: TestClient, jfk_wav: bytes, language: str
) -> None:
    body = _assert_error(_post(client, jfk_wav, language=language), 400, "bad_language")
    assert language in body["message"]
    assert client.get("/health").status_code == 200


def test_language_code_is_case_insensitive(client: TestClient, jfk_wav: bytes) -> None:
    response = _post(client, jfk_wav, language="EN")
    assert response.status_code == 200, response.text
    assert "fellow americans" in " ".join(normalize(response.json()["text"]))


def test_word_timestamps_give_aligned_words(client: TestClient, jfk_wav: bytes) -> None:
    response = _post(client, jfk_wav, response_format="verbose_json", word_timestamps="true")
    assert response.status_code == 200, response.text
    body = response.json()
    words = body["words"]
    assert error_rate(JFK.text, " ".join(w["word"] for w in words)) <= 15
    starts = [w["start"] for w in words]
    assert starts == sorted(starts)
    for word in words:
        assert 0.0 <= word["start"] <= word["end"] <= JFK.duration_s + 0.05, word
    # Real alignment, not one span stretched over the clip: "fellow" is in the first
    # two seconds, the final "country" in the last three.
    by_text = [(normalize(w["word"]), w["start"]) for w in words]
    fellow = next(start for text, start in by_text if text == ["fellow"])
    last_country = [start for text, start in by_text if text == ["country"]][-1]
    assert fellow < 2.0
    assert last_country > JFK.duration_s - 3.0


@pytest.mark.parametrize(
    ("response_format", "media_type", "head"),
    [
        ("srt", "application/x-subrip", "1\n00:00:0"),
        ("vtt", "text/vtt", "WEBVTT"),
        ("text", "text/plain", ""),
    ],
)
def test_text_formats(
    client: TestClient, jfk_wav: bytes, response_format: str, media_type: str, head: str
) -> None:
    response = _post(client, jfk_wav, response_format=response_format)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-voicemesh-engine"] == ENGINE_HEADER
    body = response.text
    assert body.startswith(head)
    if response_format == "text":
        spoken = body
    else:
        assert " --> " in body
        # Cue text is every line that is not a header, an index or a timing line.
        spoken = " ".join(
            line
            for line in body.splitlines()
            if line and line != "WEBVTT" and not line.isdigit() and " --> " not in line
        )
    assert "fellow americans" in " ".join(normalize(spoken))
    assert error_rate(JFK.text, spoken) <= 15


def _flac(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    soundfile.write(buf, pcm, RATE, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def _mp3(pcm: np.ndarray) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="mp3") as container:
        stream = container.add_stream("libmp3lame", rate=RATE, layout="mono")
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.rate = RATE
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize(
    ("encode", "filename", "magic"),
    [(_flac, "jfk.flac", (b"fLaC",)), (_mp3, "jfk.mp3", (b"ID3", b"\xff\xfb"))],
    ids=["flac", "mp3"],
)
def test_compressed_uploads_give_the_same_words(
    client: TestClient, jfk_json_text: str, encode: Any, filename: str, magic: tuple[bytes, ...]
) -> None:
    samples, _ = soundfile.read(JFK.path, dtype="int16")
    data = encode(samples)
    assert data.startswith(magic), "the encoder did not produce the intended format"
    response = _post(client, data, filename=filename)
    assert response.status_code == 200, response.text
    assert normalize(response.json()["text"]) == normalize(jfk_json_text)


def test_language_field_reaches_the_decoder(client: TestClient, jfk_wav: bytes) -> None:
    english = _post(client, jfk_wav, response_format="verbose_json", language="en")
    assert english.status_code == 200, english.text
    assert english.json()["language"] == "en"
    assert error_rate(JFK.text, english.json()["text"]) <= 15
    # A forced language is reported back (auto-detection says "en" for this clip).
    german = _post(client, jfk_wav, response_format="verbose_json", language="de")
    assert german.status_code == 200, german.text
    assert german.json()["language"] == "de"


def test_chinese_comes_back_in_simplified_characters(client: TestClient) -> None:
    # Whisper base writes this mainland AISHELL sentence in traditional characters
    # (廣州市 ... 協會); the service's default script is simplified.
    from voicemesh.stt.script import convert_text

    response = _post(
        client, AISHELL.path.read_bytes(), response_format="verbose_json", language="zh"
    )
    assert response.status_code == 200, response.text
    body = response.json()
    text = body["text"]
    assert "广州" in text, text
    assert convert_text(text, "simplified") == text
    assert all(convert_text(s["text"], "simplified") == s["text"] for s in body["segments"])
    assert error_rate(AISHELL.text, text) <= 25, text


# ---------------------------------------------------------------- bad input


def test_corrupt_bytes_are_rejected_as_undecodable(client: TestClient) -> None:
    garbage = np.random.default_rng(7).integers(0, 256, 4000, dtype=np.uint8).tobytes()
    response = client.post(
        "/v1/transcribe",
        files={"file": ("clip.wav", garbage, "audio/wav")},
        headers={"X-Request-ID": "test-corrupt-1"},
    )
    error = _assert_error(response, 400, "undecodable_audio")
    assert error["request_id"] == "test-corrupt-1"


def test_empty_file_is_a_json_client_error(client: TestClient) -> None:
    error = _assert_error(_post(client, b""), 400, "undecodable_audio")
    assert "empty" in error["message"]


def test_wav_header_without_samples_is_a_json_client_error(client: TestClient) -> None:
    buf = io.BytesIO()
    soundfile.write(buf, np.zeros(0, dtype=np.int16), RATE, format="WAV")
    error = _assert_error(_post(client, buf.getvalue()), 400, "undecodable_audio")
    assert "no audio samples" in error["message"]


def test_unknown_response_format_is_a_validation_error(client: TestClient, jfk_wav: bytes) -> None:
    response = _post(client, jfk_wav, response_format="xml")
    error = _assert_error(response, 422, "validation_error")
    assert "response_format" in error["message"]


def test_missing_file_field_is_a_validation_error(client: TestClient) -> None:
    response = client.post("/v1/transcribe", data={"response_format": "json"})
    error = _assert_error(response, 422, "validation_error")
    assert "file" in error["message"]


def test_upload_over_the_limit_is_413_and_the_service_stays_up(
    client: TestClient, jfk_wav: bytes
) -> None:
    limit = 1024
    # Same real model, a second app with a tiny upload limit (no second model load).
    small = create_stt_app(
        SttCpuSettings(redis_url="", cpu_threads=2, max_upload_bytes=limit),
        transcriber=client.app.state.stt.transcriber,  # type: ignore[attr-defined]
    )
    with TestClient(small) as small_client:
        assert len(jfk_wav) > limit
        error = _assert_error(_post(small_client, jfk_wav), 413, "file_too_large")
        assert str(limit) in error["message"]
        # Just under the limit is read and judged on its content, not its size.
        under = _post(small_client, b"\x01" * (limit - 24))
        _assert_error(under, 400, "undecodable_audio")
        assert small_client.get("/health").status_code == 200
    assert client.get("/health").json()["model_loaded"] is True


# ---------------------------------------------------------------- WS /ws/transcribe


def test_stream_ready_then_finals_that_match_the_clip(client: TestClient) -> None:
    pcm = _pcm16(JFK.path)
    with client.websocket_connect("/ws/transcribe") as ws:
        ready = _ready(ws)
        assert ready["engine"] == "faster-whisper"
        assert ready["device"] == "cpu"
        assert ready["model"] == "base"
        assert ready["sample_rate"] == RATE
        assert ready["session_id"]
        for frame in _frames(pcm):
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    assert not [m for m in messages if m["type"] == "error"], messages
    finals = _finals(messages)
    assert finals, f"no final in {messages}"
    assert error_rate(JFK.text, _joined(finals)) <= 15, _joined(finals)
    ids = [f["utterance_id"] for f in finals]
    assert ids == sorted(set(ids))
    previous_end = 0.0
    for final in finals:
        assert final["engine"] == "faster-whisper" and final["model"] == "base"
        assert final["reason"] in {"endpoint", "stop"}
        assert previous_end <= final["start"] < final["end"] <= JFK.duration_s + 0.01, final
        previous_end = final["end"]
        assert final["segments"], final
        for segment in final["segments"]:
            assert final["start"] - 0.01 <= segment["start"] <= segment["end"], segment
            assert segment["end"] <= JFK.duration_s + 0.01, segment


def test_flush_mid_clip_finalizes_what_came_so_far(client: TestClient) -> None:
    pcm = _pcm16(JFK.path)
    flush_at_s = 1.6  # inside "And so my fellow Americans"
    cut = int(flush_at_s * RATE) * 2
    with client.websocket_connect("/ws/transcribe") as ws:
        _ready(ws)
        for frame in _frames(pcm[:cut]):
            ws.send_bytes(frame)
        ws.send_text("<flush>")
        for frame in _frames(pcm[cut:]):
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    finals = _finals(messages)
    flushed = [f for f in finals if f["reason"] == "flush"]
    assert len(flushed) == 1, finals
    first = flushed[0]
    assert first is finals[0]
    assert first["start"] == pytest.approx(0.0, abs=0.01)
    assert first["end"] == pytest.approx(flush_at_s, abs=0.001)
    assert normalize(first["text"]), first
    for later in finals[1:]:
        assert later["start"] >= flush_at_s - 0.001, later
    # The cut may split a word, so allow a word or two more than a clean stream.
    assert error_rate(JFK.text, _joined(finals)) <= 25, _joined(finals)


def test_start_after_audio_is_a_non_fatal_bad_message(client: TestClient) -> None:
    pcm = _pcm16(LIBRIVOX.path)
    frames = list(_frames(pcm))
    with client.websocket_connect("/ws/transcribe") as ws:
        _ready(ws)
        ws.send_bytes(frames[0])
        ws.send_text(json.dumps({"type": "start", "sample_rate": 48000}))
        error = json.loads(_receive_within(ws)["text"])
        assert error["type"] == "error"
        assert error["code"] == "bad_message"
        assert error["fatal"] is False
        for frame in frames[1:]:
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    # The 16 kHz audio was still read as 16 kHz: the late 'start' changed nothing.
    finals = _finals(messages)
    assert error_rate(LIBRIVOX.text, _joined(finals)) <= 15, messages


def test_start_with_unknown_language_is_refused_and_the_session_goes_on(
    client: TestClient,
) -> None:
    pcm = _pcm16(LIBRIVOX.path)
    with client.websocket_connect("/ws/transcribe") as ws:
        _ready(ws)
        ws.send_text(json.dumps({"type": "start", "language": "xx"}))
        error = json.loads(_receive_within(ws)["text"])
        assert (error["type"], error["code"], error["fatal"]) == ("error", "bad_language", False)
        for frame in _frames(pcm):
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    assert error_rate(LIBRIVOX.text, _joined(_finals(messages))) <= 15, messages


def test_odd_length_frame_is_a_non_fatal_error(client: TestClient) -> None:
    pcm = _pcm16(LIBRIVOX.path)
    with client.websocket_connect("/ws/transcribe") as ws:
        _ready(ws)
        ws.send_bytes(b"\x00\x01\x02")
        error = json.loads(_receive_within(ws)["text"])
        assert error["type"] == "error"
        assert error["code"] == "odd_length_frame"
        assert error["fatal"] is False
        for frame in _frames(pcm):
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    assert error_rate(LIBRIVOX.text, _joined(_finals(messages))) <= 15, messages


def test_silence_gives_no_final(client: TestClient) -> None:
    with client.websocket_connect("/ws/transcribe") as ws:
        _ready(ws)
        for frame in _frames(bytes(RATE * 2)):  # 1 s of PCM16 zeros
            ws.send_bytes(frame)
        _stop(ws)
        messages, close_code = _messages_until_close(ws)
    assert close_code == 1000
    assert not _finals(messages), messages
    assert not [m for m in messages if m["type"] == "vad"], messages
    assert not [m for m in messages if m["type"] == "error"], messages


def test_a_full_replica_refuses_a_session_with_busy_and_1013(client: TestClient) -> None:
    """Past ``max_sessions`` a client gets a fatal ``busy`` error, then close 1013."""
    transcriber = client.app.state.stt.transcriber  # type: ignore[attr-defined]
    app = create_stt_app(SttCpuSettings(redis_url="", cpu_threads=2, max_sessions=1), transcriber)
    with TestClient(app) as full, full.websocket_connect("/ws/transcribe") as first:
        _ready(first)
        with full.websocket_connect("/ws/transcribe") as second:
            messages, close_code = _messages_until_close(second)
        assert close_code == 1013
        assert [(m["type"], m["code"], m["fatal"]) for m in messages] == [
            ("error", "busy", True)
        ], messages
        _stop(first)
        _, first_close = _messages_until_close(first)
    assert first_close == 1000


def test_a_replica_whose_finals_wait_refuses_new_sessions_but_takes_a_takeover(
    client: TestClient,
) -> None:
    """Admission by measured load: with finals waiting 2 s for a worker, a new session
    gets ``busy`` with ``retry_after`` and the reason before any audio is taken; a live
    session the gateway moves here (``?takeover=1``) is admitted all the same."""
    transcriber = client.app.state.stt.transcriber  # type: ignore[attr-defined]
    app = create_stt_app(SttCpuSettings(redis_url="", cpu_threads=2), transcriber)
    with TestClient(app) as loaded:
        meter = app.state.stt.scheduler.meter
        now = time.perf_counter()
        for i in range(5):
            done = now - 2 + i * 0.4
            meter.record(done - 2.2, done - 0.2, done, essential=True)
        # Two sessions, one per decode worker, are always taken; the third is not.
        with (
            loaded.websocket_connect("/ws/transcribe") as one,
            loaded.websocket_connect("/ws/transcribe") as two,
        ):
            _ready(one)
            _ready(two)
            with loaded.websocket_connect("/ws/transcribe") as refused:
                messages, close_code = _messages_until_close(refused)
            with loaded.websocket_connect("/ws/transcribe?takeover=1") as moved:
                assert _ready(moved)["type"] == "ready"
                _stop(moved)
                _, moved_close = _messages_until_close(moved)
            for session in (one, two):
                _stop(session)
                _messages_until_close(session)
        assert close_code == 1013
        assert len(messages) == 1, messages
        busy = messages[0]
        assert (busy["type"], busy["code"], busy["fatal"]) == ("error", "busy", True)
        assert busy["retry_after"] == 3
        assert busy["reason"] == "final_wait"
        assert "finals wait" in busy["message"]
        assert moved_close == 1000
        health = loaded.get("/health").json()
    assert health["load"]["refused"] == {"final_wait": 1}
    assert health["load"]["final_wait_s"] > 0.8


def test_each_decode_worker_has_a_model_replica_of_its_own(client: TestClient) -> None:
    """CTranslate2 runs one call at a time per model replica: with fewer replicas than
    decode workers, the workers take turns and a 2-core replica decodes on one core."""
    state = client.app.state.stt  # type: ignore[attr-defined]
    assert state.settings.workers == 2
    assert state.transcriber._model.model.num_workers == state.settings.workers


def test_a_batched_decode_gives_each_block_its_own_words(client: TestClient) -> None:
    """Several sessions' blocks in one encoder pass and one beam search: each gets
    the words it gets alone (within a few points: the batch shares context length)."""
    transcriber = client.app.state.stt.transcriber  # type: ignore[attr-defined]
    names = ("pocketsphinx-cards-005.wav", "picovoice-cheetah-test_en.wav", "lhotse-LJ002-0020.wav")
    clips = [_clip(n) for n in names]
    audios = [np.frombuffer(_pcm16(c.path), "<i2").astype(np.float32) / 32768 for c in clips]
    # The scheduler batches only blocks of one context (most often none).
    prompts = ["Seven of diamonds."] * 3
    options = [
        {"language": "en", "beam_size": 5, "prefix": None, "prompt": p, "quality_fallback": True}
        for p in prompts
    ]
    batched = transcriber.transcribe_batch(audios, options)
    alone = [transcriber.transcribe(a, **o) for a, o in zip(audios, options, strict=True)]
    assert len(batched) == len(clips)
    for clip, one, many in zip(clips, alone, batched, strict=True):
        one_word = 100 / len(normalize(clip.text))  # a longer window may change a word
        assert error_rate(clip.text, many.text) <= error_rate(clip.text, one.text) + one_word, (
            clip.file,
            one.text,
            many.text,
        )
        assert many.language == "en"
        assert many.duration == pytest.approx(one.duration)


# ---------------------------------------------------------------- metrics


def test_metrics_count_file_transcriptions(client: TestClient, jfk_wav: bytes) -> None:
    before = _requests_total(client, "transcribe_file", "ok")
    assert _post(client, jfk_wav).status_code == 200
    after = _requests_total(client, "transcribe_file", "ok")
    assert after == before + 1
