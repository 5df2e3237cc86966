"""``tts_vits`` on loopback with the real Piper voice: catalogue, formats, streaming, limits.

One real uvicorn process (no Redis) serves the module; a second one with a tiny
queue shows how excess requests are refused. Intelligibility (Whisper round trip)
and the gateway are in ``tests/integration/test_tts.py``.
"""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import soundfile

from tests.harness import ServiceProcess, free_port
from voicemesh.audio_files import decode_audio_file

pytestmark = pytest.mark.service

THREE_SENTENCES = (
    "The first sentence is here, and it goes on for a little while. "
    "Then comes the second one. And a third sentence closes the text."
)
SHORT = "Hello there. How are you today?"


SIX_SENTENCES = (
    "Good morning. The weather today is calm and bright across the valley. "
    "Later in the afternoon a light wind will come in from the west. "
    "By the evening the clouds will gather over the hills. "
    "Some rain is expected during the night, mostly after midnight. "
    "Tomorrow will start cool and grey, and clear up by noon."
)
"""A short first sentence and five longer ones: streamed, the first arrives long before
the end."""


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty model cache of the module's own: the service prepares its bundled voice
    there, so which voices are installed does not depend on the user's cache."""
    return tmp_path_factory.mktemp("tts-models")


def _start(log_dir: Path, models: Path, **settings: str) -> ServiceProcess:
    env = {
        "VOICEMESH_REDIS_URL": "",
        "VOICEMESH_MODELS_DIR": str(models),
        **{f"VOICEMESH_TTS_VITS_{k.upper()}": v for k, v in settings.items()},
    }
    service = ServiceProcess("tts_vits", free_port(), env, log_dir).start()
    try:
        service.wait_healthy(timeout_s=120)
    except BaseException:
        service.stop()
        raise
    return service


@pytest.fixture(scope="module")
def tts(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[httpx.Client]:
    """A client for one tts_vits replica with default settings."""
    service = _start(tmp_path_factory.mktemp("tts-logs"), models_dir)
    try:
        with httpx.Client(base_url=service.url, timeout=120) as client:
            yield client
    finally:
        service.stop()


def _decode(data: bytes, fmt: str, rate: int) -> np.ndarray:
    if fmt == "pcm":
        return np.frombuffer(data, "<i2").astype(np.float32) / 32768
    return decode_audio_file(data, target_rate=rate)


def test_health_and_registry_off(tts: httpx.Client) -> None:
    body = tts.get("/health").json()
    assert body["status"] == "ok"
    assert body["service"] == "tts_vits"
    assert body["models_loaded"] == ["piper-en_US-joe-medium"]
    assert body["registry"] == "disabled"


def test_voice_list_filters_and_pages(tts: httpx.Client) -> None:
    everything = tts.get("/v1/voices", params={"limit": 500}).json()
    assert everything["total"] == len(everything["voices"]) > 370
    installed = tts.get("/v1/voices", params={"installed": "true"}).json()
    assert [v["id"] for v in installed["voices"]] == ["en_US-joe-medium"]
    assert installed["voices"][0]["installed"] is True
    page1 = tts.get("/v1/voices", params={"language": "zh", "limit": 100}).json()
    page2 = tts.get(
        "/v1/voices", params={"language": "zh", "limit": 100, "offset": page1["next_offset"]}
    ).json()
    assert page1["total"] == 361 and page1["next_offset"] == 100
    assert not {v["id"] for v in page1["voices"]} & {v["id"] for v in page2["voices"]}
    assert all(v["language"] == "zh-CN" for v in page1["voices"])
    british = tts.get("/v1/voices", params={"language": "en-GB", "gender": "male"}).json()
    assert {v["id"] for v in british["voices"]} == {"kokoro-bm_george", "kokoro-bm_lewis"}
    assert all(not v["installed"] for v in british["voices"])
    bad = tts.get("/v1/voices", params={"limit": 0})
    assert bad.status_code == 422 and bad.json()["error"]["code"] == "validation_error"


def test_voice_detail_carries_a_playable_sample(tts: httpx.Client) -> None:
    body = tts.get("/v1/voices/en_US-joe-medium").json()
    sample = body["sample"]
    audio, rate = soundfile.read(io.BytesIO(base64.b64decode(sample["audio_base64"])))
    assert rate == sample["sample_rate"] == 22050
    assert abs(len(audio) / rate - sample["duration_s"]) < 0.01
    assert 1.5 < sample["duration_s"] < 8
    missing = tts.get("/v1/voices/kokoro-af").json()
    assert missing["installed"] is False and missing["sample"] is None
    unknown = tts.get("/v1/voices/nobody")
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "unknown_voice"


@pytest.mark.parametrize(
    ("fmt", "wanted", "stated"),
    [
        ("wav", None, 22050),
        ("wav", 16000, 16000),
        ("pcm", 8000, 8000),
        ("flac", 44100, 44100),
        ("mp3", None, 22050),
        ("mp3", 16000, 16000),
        ("opus", None, 24000),
        ("opus", 48000, 48000),
    ],
)
def test_every_format_has_the_stated_rate_and_duration(
    tts: httpx.Client, fmt: str, wanted: int | None, stated: int
) -> None:
    body: dict[str, object] = {"text": SHORT, "format": fmt}
    if wanted:
        body["sample_rate"] = wanted
    response = tts.post("/v1/synthesize", json=body)
    assert response.status_code == 200, response.text
    headers = response.headers
    assert int(headers["x-voicemesh-sample-rate"]) == stated
    assert headers["x-voicemesh-engine"] == "sherpa-onnx/piper"
    assert headers["x-voicemesh-voice"] == "en_US-joe-medium"
    if fmt in ("wav", "flac"):
        info = soundfile.info(io.BytesIO(response.content))
        assert (info.samplerate, info.channels) == (stated, 1)
    if fmt == "pcm":
        assert headers["content-type"].startswith(f"audio/L16;rate={stated}")
    audio = _decode(response.content, fmt, stated)
    stated_s = float(headers["x-voicemesh-duration"])
    # MP3 frames pad the end by up to one frame (~26 ms at 22 kHz, 72 ms at 16 kHz).
    assert abs(len(audio) / stated - stated_s) < 0.08, (len(audio) / stated, stated_s)
    assert 1.2 < stated_s < 4.0
    assert float(np.sqrt(np.mean(audio**2))) > 0.02  # speech, not silence


def test_streaming_sends_chunks_early_and_matches_the_whole(tts: httpx.Client) -> None:
    whole = tts.post("/v1/synthesize", json={"text": SIX_SENTENCES, "format": "pcm"})
    whole_s = len(whole.content) / 2 / 22050
    arrivals: list[tuple[float, int]] = []
    started = time.monotonic()
    with tts.stream(
        "POST", "/v1/synthesize", json={"text": SIX_SENTENCES, "format": "pcm", "stream": True}
    ) as resp:
        assert resp.status_code == 200
        assert resp.headers["x-voicemesh-stream"] == "sentences"
        for chunk in resp.iter_raw():
            if chunk:
                arrivals.append((time.monotonic() - started, len(chunk)))
    done = time.monotonic() - started
    streamed_s = sum(n for _, n in arrivals) / 2 / 22050
    assert abs(streamed_s - whole_s) / whole_s < 0.05, (streamed_s, whole_s)
    # Streamed, not buffered: audio came in more than one piece, and the first piece (the
    # short first sentence) arrived while the five longer ones were still being
    # synthesized. A response made whole and then sent in pieces has its first byte
    # only after all six sentences, at about the same time as its last.
    assert len(arrivals) > 1, arrivals
    first_at = arrivals[0][0]
    print(f"first audio after {first_at:.2f} s of {done:.2f} s")
    assert first_at < 0.5 * done, (first_at, done, arrivals)


def test_streamed_wav_and_mp3_decode(tts: httpx.Client) -> None:
    for fmt in ("wav", "mp3", "opus", "flac"):
        with tts.stream(
            "POST", "/v1/synthesize", json={"text": THREE_SENTENCES, "format": fmt, "stream": True}
        ) as resp:
            data = resp.read()
            rate = int(resp.headers["x-voicemesh-sample-rate"])
        seconds = len(decode_audio_file(data, target_rate=rate)) / rate
        assert 5.0 < seconds < 10.0, (fmt, seconds)


def test_speed_and_volume_change_the_audio(tts: httpx.Client) -> None:
    def synth(**extra: object) -> np.ndarray:
        response = tts.post(
            "/v1/synthesize", json={"text": THREE_SENTENCES, "format": "pcm", **extra}
        )
        assert response.status_code == 200, response.text
        return np.frombuffer(response.content, "<i2").astype(np.float32) / 32768

    normal, fast, slow = synth(), synth(speed=2.0), synth(speed=0.5)
    assert len(fast) < 0.7 * len(normal) < 0.7 * len(slow)
    quiet = synth(volume_db=-20)
    ratio = np.sqrt(np.mean(quiet**2)) / np.sqrt(np.mean(normal**2))
    assert 0.06 < ratio < 0.16, ratio


@pytest.mark.parametrize(
    ("body", "status", "code"),
    [
        ({"text": ""}, 422, "empty_text"),
        ({"text": "   \n "}, 422, "empty_text"),
        ({"text": "word " * 1001}, 413, "text_too_long"),
        ({"text": "Hi.", "voice": "nobody"}, 404, "unknown_voice"),
        ({"text": "Hi.", "voice": "kokoro-af"}, 404, "voice_not_installed"),
        ({"text": "Hi.", "speed": 2.5}, 422, "validation_error"),
        ({"text": "Hi.", "speed": 0.1}, 422, "validation_error"),
        ({"text": "Hi.", "format": "aac"}, 422, "validation_error"),
        ({"text": "Hi.", "sample_rate": 100}, 422, "validation_error"),
        ({"voice": "en_US-joe-medium"}, 422, "validation_error"),
        ({"text": "Hi.", "stream": True, "voice": "nobody"}, 404, "unknown_voice"),
        ({"text": "Hi.", "volume_db": 25.5}, 422, "validation_error"),
        ({"text": "Hi.", "voice_id": "en_US-joe-medium", "pitch": 2}, 422, "unknown_field"),
        ({"text": "Hi.", "model": "vits-zh-aishell3", "voice_id": 174}, 404, "unknown_voice"),
        ({"text": "Hi.", "model": "vits-zh-aishell3", "voice_id": 77}, 404, "voice_not_installed"),
        ({"text": "Hi.", "model": "no-such-model"}, 404, "unknown_model"),
    ],
)
def test_bad_requests_get_clear_errors(
    tts: httpx.Client, body: dict[str, object], status: int, code: str
) -> None:
    response = tts.post("/v1/synthesize", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"] and error["request_id"]
    if code == "text_too_long":
        assert "5000" in error["message"]
    if code == "unknown_field":
        assert "pitch" in error["message"]
    if body.get("voice_id") == 77:
        assert "zh-aishell3-77" in error["message"]  # speaker 77 of the model named
    assert tts.get("/health").status_code == 200


def test_text_with_numbers_and_non_ascii_is_spoken(tts: httpx.Client) -> None:
    response = tts.post(
        "/v1/synthesize",
        json={"text": "Dr. Müller paid $42.50 on 3 May — naïve café prices!", "format": "wav"},
    )
    assert response.status_code == 200
    assert float(response.headers["x-voicemesh-duration"]) > 2.5


def test_compare_returns_every_candidate_and_a_stated_rule(tts: httpx.Client) -> None:
    response = tts.post(
        "/v1/compare",
        json={
            "text": "Compare how these two settings sound.",
            "candidates": [
                {"voice": "en_US-joe-medium"},
                {"voice": "en_US-joe-medium", "speed": 1.5},
            ],
            "format": "mp3",
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    first, second = body["candidates"]
    assert second["duration_s"] < first["duration_s"]
    for candidate in (first, second):
        audio = decode_audio_file(
            base64.b64decode(candidate["audio_base64"]), target_rate=candidate["sample_rate"]
        )
        assert abs(len(audio) / candidate["sample_rate"] - candidate["duration_s"]) < 0.1
        assert candidate["rtf"] == pytest.approx(
            candidate["synthesis_s"] / candidate["duration_s"], rel=0.02
        )
    assert body["recommendation"]["index"] in (0, 1)
    assert "real-time factor" in body["recommendation"]["rule"]
    bad = tts.post("/v1/compare", json={"text": "x", "candidates": [{"voice": "nobody"}]})
    assert bad.status_code == 404 and bad.json()["error"]["code"] == "unknown_voice"
    empty = tts.post("/v1/compare", json={"text": "x", "candidates": []})
    assert empty.status_code == 422 and empty.json()["error"]["code"] == "validation_error"


def test_metrics_report_synthesis_time_first_chunk_and_chars_per_second(tts: httpx.Client) -> None:
    tts.post("/v1/synthesize", json={"text": SHORT})
    text = tts.get("/metrics").text
    for name in (
        "voicemesh_tts_synthesis_seconds_count",
        "voicemesh_tts_first_chunk_seconds_count",
        "voicemesh_tts_chars_per_second_count",
        "voicemesh_tts_rtf_count",
    ):
        line = next(line for line in text.splitlines() if line.startswith(name))
        assert float(line.rsplit(" ", 1)[1]) >= 1


def test_excess_requests_are_refused_busy_and_the_service_stays_up(
    tmp_path: Path, models_dir: Path
) -> None:
    service = _start(
        tmp_path,
        models_dir,
        max_concurrent="1",
        max_queue="1",
        queue_timeout_s="0.5",
        pool_size="1",
    )
    try:

        def one(_: int) -> httpx.Response:
            return httpx.post(
                f"{service.url}/v1/synthesize", json={"text": THREE_SENTENCES * 2}, timeout=120
            )

        with ThreadPoolExecutor(6) as pool:
            responses = list(pool.map(one, range(6)))
        codes = sorted(r.status_code for r in responses)
        assert codes.count(200) >= 1 and codes.count(503) >= 3, codes
        for response in responses:
            if response.status_code == 503:
                assert response.json()["error"]["code"] == "busy"
            else:
                assert soundfile.info(io.BytesIO(response.content)).duration > 8
        assert httpx.get(f"{service.url}/health").json()["status"] == "ok"
        after = httpx.post(f"{service.url}/v1/synthesize", json={"text": SHORT}, timeout=60)
        assert after.status_code == 200
        # A client that walks away mid-stream gives its slot back at once.
        with httpx.Client(base_url=service.url, timeout=60) as client:
            with client.stream(
                "POST",
                "/v1/synthesize",
                json={"text": THREE_SENTENCES * 6, "stream": True, "format": "pcm"},
            ) as resp:
                next(resp.iter_raw())
            again = client.post("/v1/synthesize", json={"text": SHORT})
            assert again.status_code == 200
            assert client.get("/health").json()["active"] == 0
    finally:
        service.stop()


def test_in_process_with_an_engine_given_to_the_factory(models_dir: Path) -> None:
    from fastapi.testclient import TestClient

    from voicemesh.tts import VitsSynthesizer, default_voice_files
    from voicemesh.tts.service import create_tts_app
    from voicemesh.tts.settings import TtsSettings

    engine = VitsSynthesizer(default_voice_files(), pool_size=1)
    settings = TtsSettings(redis_url="", models_dir=models_dir)
    app = create_tts_app(settings, {"piper-en_US-joe-medium": engine})
    with TestClient(app) as client:
        assert app.state.tts.engines.engines["piper-en_US-joe-medium"] is engine
        response = client.post("/v1/synthesize", json={"text": SHORT})
        assert response.status_code == 200
        assert response.headers["x-voicemesh-voice"] == "en_US-joe-medium"
        assert soundfile.info(io.BytesIO(response.content)).duration > 1.0
        assert client.get("/health").json()["models_loaded"] == ["piper-en_US-joe-medium"]


def test_a_lone_synthesis_runs_on_every_core_and_concurrent_ones_share_the_pool() -> None:
    import threading

    from voicemesh.tts import VitsSynthesizer, default_voice_files
    from voicemesh.tts.text import split_sentences

    files = default_voice_files()
    assert VitsSynthesizer(files, num_threads=1, solo_threads=1).solo_generations == 0
    engine = VitsSynthesizer(files, num_threads=1, pool_size=2, solo_threads=2)
    engine.synthesize("Hello there. How are you?")
    assert engine.solo_generations == 2  # alone: both sentences on the solo instance

    start = threading.Barrier(2)
    results = []

    def speak() -> None:
        start.wait()
        results.append(engine.synthesize(SIX_SENTENCES))

    threads = [threading.Thread(target=speak) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    pieces = 2 * len(split_sentences(SIX_SENTENCES))
    assert len(results) == 2
    # While the two overlap, pieces go to the one-thread pool, not the solo instance.
    assert engine.solo_generations - 2 < pieces / 2, engine.solo_generations


def test_a_long_first_sentence_streams_its_first_words_on_their_own(tts: httpx.Client) -> None:
    text = "Please remind me to take my medicine at eight o'clock tonight."
    whole = tts.post("/v1/synthesize", json={"text": text, "format": "pcm"})
    assert whole.status_code == 200
    whole_s = len(whole.content) / 2 / 22050
    with tts.stream(
        "POST", "/v1/synthesize", json={"text": text, "format": "pcm", "stream": True}
    ) as resp:
        assert resp.status_code == 200
        chunks = [chunk for chunk in resp.iter_raw() if chunk]
    streamed_s = sum(map(len, chunks)) / 2 / 22050
    # The same speech, not a piece lost or doubled (the whole draws its own noise, so
    # the length may differ a little; tests/integration/test_tts.py holds the reference
    # sentences to 5%).
    assert abs(streamed_s - whole_s) / whole_s < 0.15, (streamed_s, whole_s)
    # The sentence's first quarter second comes first, alone, not the whole sentence.
    assert len(chunks) >= 2, [len(c) for c in chunks]
    assert len(chunks[0]) / 2 / 22050 < 0.5 * streamed_s, [len(c) for c in chunks]


def test_piper_voices_run_on_onnxruntime_with_the_same_speech_as_sherpa_onnx(
    tmp_path: Path,
) -> None:
    import dataclasses
    import shutil

    from voicemesh.tts import default_voice_files
    from voicemesh.tts.piper_runtime import PiperRuntimeSynthesizer, load_synthesizer
    from voicemesh.tts.sherpa import SherpaSynthesizer

    # Noiseless, so both runtimes draw the same durations from the same model.
    files = dataclasses.replace(default_voice_files(), noise_scale=0.0, noise_scale_w=0.0)
    onnx = load_synthesizer(files, num_threads=1)
    sherpa = load_synthesizer(files, piper_runtime="sherpa-onnx", num_threads=1)
    assert isinstance(onnx, PiperRuntimeSynthesizer)
    assert isinstance(sherpa, SherpaSynthesizer)
    assert (onnx.sample_rate, onnx.num_speakers) == (sherpa.sample_rate, sherpa.num_speakers)
    text = "Please remind me to take my medicine at eight o'clock tonight."
    a = onnx.synthesize(text).audio
    b = sherpa.synthesize(text).audio
    assert abs(len(a) - len(b)) <= 0.01 * len(b), (len(a), len(b))
    level_a, level_b = float(np.sqrt(np.mean(a**2))), float(np.sqrt(np.mean(b**2)))
    assert abs(level_a - level_b) < 0.1 * level_b, (level_a, level_b)
    # Faster speech is shorter on onnxruntime too (speed reaches the length scale).
    assert len(onnx.synthesize(text, speed=1.5).audio) < 0.8 * len(a)

    # A Piper model without Piper's config beside it runs on sherpa-onnx.
    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("model.onnx", "tokens.txt"):
        shutil.copy(files.model.parent / name, bare / name)
    bare_files = dataclasses.replace(files, model=bare / "model.onnx", tokens=bare / "tokens.txt")
    assert isinstance(load_synthesizer(bare_files, num_threads=1), SherpaSynthesizer)


def test_streaming_decodes_the_first_frames_alone_into_the_samples_of_the_whole() -> None:
    import dataclasses

    from voicemesh.tts import default_voice_files
    from voicemesh.tts.piper_runtime import (
        FIRST_PART_FRAMES,
        WHOLE_FIRST_MAX_CHARS,
        PiperRuntimeSynthesizer,
        load_synthesizer,
    )

    # Noiseless: the stream and the whole draw the same latent frames.
    files = dataclasses.replace(default_voice_files(), noise_scale=0.0, noise_scale_w=0.0)
    engine = load_synthesizer(files, num_threads=1, pool_size=1, solo_threads=2)
    assert isinstance(engine, PiperRuntimeSynthesizer) and engine.split_stream
    text = (
        "Please remind me to take my medicine at eight o'clock tonight. "
        "Would you like me to order them?"
    )
    chunks = list(engine.synthesize_chunks(text))
    whole = engine.synthesize(text).audio
    streamed = np.concatenate([chunk.audio for chunk in chunks])
    # The first sentence's first frames, then the rest of it, then the second sentence.
    assert [chunk.text for chunk in chunks] == [
        "Please remind me to take my medicine at eight o'clock tonight.",
        "Please remind me to take my medicine at eight o'clock tonight.",
        "Would you like me to order them?",
    ]
    assert len(chunks[0].audio) == FIRST_PART_FRAMES * 256, len(chunks[0].audio)
    # Joined, the parts are the whole's samples: no seam, nothing lost or doubled.
    assert len(streamed) == len(whole), (len(streamed), len(whole))
    assert float(np.abs(streamed - whole).max()) < 1e-4
    # A long first sentence is cut in the text first, so its encoder pass stays short.
    long_first = "I have added milk, eggs and fresh bread " + "and butter " * 8 + "to your list."
    assert len(long_first) > WHOLE_FIRST_MAX_CHARS
    first = next(iter(engine.synthesize_chunks(long_first)))
    assert first.text == "I have added milk,", first.text
    # A short reply is one part: there is nothing to gain from splitting it.
    assert len(list(engine.synthesize_chunks("Hello!"))) == 1


def test_the_8_bit_decoder_speaks_like_the_float_one() -> None:
    import dataclasses

    import onnx

    from voicemesh.tts import default_voice_files
    from voicemesh.tts.piper_runtime import PiperRuntimeSynthesizer, load_synthesizer

    files = dataclasses.replace(default_voice_files(), noise_scale=0.0, noise_scale_w=0.0)
    plain = load_synthesizer(files, num_threads=1)
    int8 = load_synthesizer(files, num_threads=1, decoder_int8=True)
    assert isinstance(int8, PiperRuntimeSynthesizer) and int8.decoder_int8
    assert int8.split is not None
    ops = {node.op_type for node in onnx.load_from_string(int8.split.decoder).graph.node}
    assert "DequantizeLinear" in ops, ops
    text = "Turn off the lights in the living room and lock the front door."
    a = plain.synthesize(text).audio
    b = int8.synthesize(text).audio
    assert len(a) == len(b)
    snr = 10 * np.log10(float(np.sum(a**2)) / float(np.sum((a - b) ** 2)))
    assert snr > 15.0, snr
