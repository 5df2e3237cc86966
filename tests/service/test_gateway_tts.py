"""The specification's TTS API on the gateway: ``POST /v1/tts/synthesize``,
``GET /v1/tts/voices`` (and one voice, and its sample), ``POST /v1/tts/compare`` and the
short-lived ``/v1/tts/audio/...`` URLs.

The gateway runs in-process (``TestClient``) with two client API keys; behind it, the
real ``tts_vits`` app with the bundled Piper voice (``en_US-joe-medium``) runs under
uvicorn on loopback and registers itself in a real Redis, as a replica does. The other
catalogue models are not installed here, which the voice-resolution cases use: a
speaker index of an uninstalled multi-speaker model is named in the 404.
"""

from __future__ import annotations

import io
import math
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from gateway.app import create_app
from gateway.settings import GatewaySettings
from tests.harness import (
    RedisServer,
    ThreadedServer,
    assert_error,
    empty_redis_db,
    tts_vits_server,
)
from voicemesh.audio_files import decode_audio_file

pytestmark = pytest.mark.service

TTS_TEST_DB = 9
"""A Redis database of its own (the ASR tests use 8, the admin tests 7)."""
KEY = "tts-client-key"
OTHER_KEY = "tts-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
OTHER = {"Authorization": f"Bearer {OTHER_KEY}"}
JOE = "en_US-joe-medium"
JOE_MODEL = "piper-en_US-joe-medium"
TEXT = "The quick brown fox jumps over the lazy dog. Then it rests in the shade."


@pytest.fixture(scope="module")
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    """An empty Redis database for this module, emptied again afterwards."""
    with empty_redis_db(redis_server, TTS_TEST_DB) as url:
        yield url


@pytest.fixture(scope="module")
def tts(redis_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedServer]:
    """The real tts_vits app on loopback, with its own model folder, registered in Redis."""
    with tts_vits_server(redis_url, tmp_path_factory.mktemp("tts-models")) as server:
        yield server


@pytest.fixture(scope="module")
def gateway(tts: ThreadedServer, redis_url: str) -> Iterator[TestClient]:
    """The keyed gateway, once it routes to the TTS replica."""
    settings = GatewaySettings(
        redis_url=redis_url,
        registry_refresh_s=0.1,
        probe_interval_s=0,
        use_detector=False,
        api_keys=[KEY, OTHER_KEY],
        requests_per_minute_per_key=10_000,
    )
    with TestClient(create_app(settings)) as client:
        deadline = time.monotonic() + 30
        while client.get("/health").json()["replicas"].get("tts_vits") != 1:
            assert time.monotonic() < deadline, "the gateway never saw the TTS replica"
            time.sleep(0.1)
        yield client


def pcm(response: Any) -> np.ndarray:
    """16-bit samples of a ``format: pcm`` answer."""
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, "<i2")


# ---------------------------------------------------------------- synthesize


def test_json_answer_describes_the_audio_and_links_it_for_this_key_only(
    gateway: TestClient,
) -> None:
    body = {"text": TEXT, "model": JOE_MODEL, "voice_id": 0, "format": "json", "speed": 1.0}
    response = gateway.post("/v1/tts/synthesize", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["success"] is True
    assert answer["model"] == JOE_MODEL
    assert answer["voice_id"] == 0 and answer["voice"] == JOE and answer["voice_name"] == "Joe"
    assert 3.0 < answer["duration_seconds"] < 8.0
    assert answer["processing_time_ms"] > 0
    metadata = answer["metadata"]
    assert metadata["sample_rate"] == 22050
    assert (metadata["channels"], metadata["bits_per_sample"]) == (1, 16)
    assert 0 < metadata["rtf"] < 2
    assert answer["audio_url"].startswith("/v1/tts/audio/")
    assert answer["expires_at"] > time.time() + 60

    audio = gateway.get(answer["audio_url"], headers=AUTH)
    assert audio.status_code == 200 and audio.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(audio.content))
    assert rate == metadata["sample_rate"]
    assert len(samples) / rate == pytest.approx(answer["duration_seconds"], abs=0.01)

    assert_error(gateway.get(answer["audio_url"], headers=OTHER), 403, "forbidden")
    assert_error(gateway.get(answer["audio_url"]), 401, "unauthorized")
    assert_error(gateway.get("/v1/tts/audio/not-a-token.wav", headers=AUTH), 404, "audio_not_found")
    # The owner still has it after the others were refused.
    assert gateway.get(answer["audio_url"], headers=AUTH).content == audio.content


def test_json_answer_links_mp3_audio_when_asked(gateway: TestClient) -> None:
    body = {"text": "Short and compressed.", "format": "json", "audio_format": "mp3"}
    answer = gateway.post("/v1/tts/synthesize", json=body, headers=AUTH).json()
    assert answer["voice_id"] == JOE  # none asked: the default voice
    assert answer["metadata"]["bits_per_sample"] is None
    audio = gateway.get(answer["audio_url"], headers=AUTH)
    assert audio.headers["content-type"] == "audio/mpeg"
    decoded = decode_audio_file(audio.content, target_rate=22050)
    assert len(decoded) / 22050 == pytest.approx(answer["duration_seconds"], abs=0.1)


@pytest.mark.parametrize(("fmt", "media_type"), [("mp3", "audio/mpeg"), ("flac", "audio/flac")])
def test_audio_formats_come_back_as_audio_with_the_voice_named(
    gateway: TestClient, fmt: str, media_type: str
) -> None:
    body = {"text": "Hello there.", "voice_id": JOE, "format": fmt, "sample_rate": 16000}
    response = gateway.post("/v1/tts/synthesize", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == media_type
    assert response.headers["x-voicemesh-voice"] == JOE
    assert response.headers["x-voicemesh-sample-rate"] == "16000"
    decoded = decode_audio_file(response.content, target_rate=16000)
    assert 0.5 < len(decoded) / 16000 < 3.0


def test_earlier_clients_keep_working_with_voice_and_streaming(gateway: TestClient) -> None:
    body = {"text": TEXT, "voice": JOE, "format": "pcm", "stream": True}
    with gateway.stream("POST", "/v1/tts/synthesize", json=body, headers=AUTH) as response:
        assert response.status_code == 200
        assert response.headers["x-voicemesh-stream"] == "sentences"
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    assert 3.0 < sum(map(len, chunks)) / 2 / 22050 < 8.0


def test_plus_25_db_is_louder_and_no_sample_reaches_full_scale(gateway: TestClient) -> None:
    def synth(volume_db: float) -> np.ndarray:
        body = {"text": TEXT, "voice_id": JOE, "format": "pcm", "volume_db": volume_db}
        return pcm(gateway.post("/v1/tts/synthesize", json=body, headers=AUTH)).astype(np.int32)

    normal, loud = synth(0), synth(25)
    assert len(loud) == len(normal)
    rms_ratio = math.sqrt(np.mean(loud.astype(float) ** 2) / np.mean(normal.astype(float) ** 2))
    assert rms_ratio > 3.0, rms_ratio  # well over +10 dB louder on average
    assert int(np.abs(loud).max()) < 32767  # no sample at full scale
    # +25 dB (x17.8) of the voice's peaks would clip a plain gain thousands of times.
    assert int((np.abs(normal) * 17.78 >= 32767).sum()) > 1000
    assert int((np.abs(loud) >= 32000).sum()) < 0.001 * len(loud)


@pytest.mark.parametrize(
    ("body", "status", "code", "named"),
    [
        ({"text": "Hi.", "voice_id": JOE, "pitch": 3}, 422, "unknown_field", "pitch"),
        ({"text": "Hi.", "voice_id": "nobody"}, 404, "unknown_voice", "nobody"),
        ({"text": "Hi.", "model": "no-such-model"}, 404, "unknown_model", JOE_MODEL),
        ({"text": "Hi.", "model": JOE_MODEL, "voice_id": 3}, 404, "unknown_voice", "0..0"),
        (
            {"text": "Hi.", "model": "vits-zh-aishell3", "voice_id": 77},
            404,
            "voice_not_installed",
            "zh-aishell3-77",
        ),
        (
            {"text": "Hi.", "model": "vits-zh-aishell3", "voice_id": JOE},
            409,
            "voice_model_mismatch",
            JOE_MODEL,
        ),
        ({"text": "Hi.", "volume_db": 25.5}, 422, "validation_error", "volume_db"),
        ({"text": "Hi.", "volume_db": -61}, 422, "validation_error", "volume_db"),
        ({"text": "Hi.", "speed": 2.5}, 422, "validation_error", "speed"),
        ({"text": "Hi.", "sample_rate": 96000}, 422, "validation_error", "sample_rate"),
        ({"text": "Hi.", "format": "aac"}, 422, "validation_error", "format"),
        ({"text": "Hi.", "format": "json", "stream": True}, 400, "bad_request", "json"),
        ({"text": "  "}, 422, "empty_text", "empty"),
    ],
)
def test_bad_synthesis_requests_are_refused_saying_why(
    gateway: TestClient, body: dict[str, Any], status: int, code: str, named: str
) -> None:
    response = gateway.post("/v1/tts/synthesize", json=body, headers=AUTH)
    assert named in assert_error(response, status, code)


def test_a_wrong_key_is_refused_before_anything_is_synthesized(gateway: TestClient) -> None:
    body = {"text": "Hi."}
    wrong = {"Authorization": "Bearer not-a-key"}
    assert_error(gateway.post("/v1/tts/synthesize", json=body, headers=wrong), 401, "unauthorized")
    assert_error(gateway.get("/v1/tts/voices", headers=wrong), 401, "unauthorized")


# ---------------------------------------------------------------- unknown fields elsewhere


def test_unknown_fields_are_refused_on_the_gateways_own_bodies(gateway: TestClient) -> None:
    compare = {"text": "Hi.", "candidates": [{"voice_id": JOE, "pitch": 1}]}
    message = assert_error(
        gateway.post("/v1/tts/compare", json=compare, headers=AUTH), 422, "unknown_field"
    )
    assert "candidates.0.pitch" in message
    mode = gateway.post("/v1/admin/mode", json={"mode": "cpu", "force": True}, headers=AUTH)
    assert "force" in assert_error(mode, 422, "unknown_field")
    files = {"audio": ("ref.wav", b"RIFF", "audio/wav")}
    form = {"name": "me", "consent": "true", "emotion": "happy"}
    clone = gateway.post("/v1/clone/voices", files=files, data=form, headers=AUTH)
    assert "emotion" in assert_error(clone, 422, "unknown_field")


def test_the_openai_route_keeps_accepting_openais_own_fields(gateway: TestClient) -> None:
    body = {
        "model": "tts-1",
        "input": "Hello.",
        "voice": JOE,
        "response_format": "wav",
        "user": "someone",  # an OpenAI field this server does not use
    }
    response = gateway.post("/v1/audio/speech", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["x-voicemesh-voice"] == JOE


# ---------------------------------------------------------------- voices


def test_voice_list_has_the_specified_fields_pages_and_filters(gateway: TestClient) -> None:
    listing = gateway.get(
        "/v1/tts/voices", params={"language": "zh", "page": 2, "limit": 100}, headers=AUTH
    )
    assert listing.status_code == 200, listing.text
    body = listing.json()
    assert body["pagination"] == {"page": 2, "limit": 100, "total": 361, "total_pages": 4}
    assert body["filters_applied"] == {"language": "zh"}
    first = gateway.get(
        "/v1/tts/voices", params={"language": "zh", "page": 1, "limit": 100}, headers=AUTH
    ).json()
    assert len(body["voices"]) == len(first["voices"]) == 100
    assert not {v["id"] for v in body["voices"]} & {v["id"] for v in first["voices"]}
    for voice in body["voices"]:
        assert voice["language"] == "zh-CN"
        assert {"id", "name", "model", "gender", "moods", "tags", "sample_url"} <= voice.keys()
        assert voice["sample_url"] is None  # not installed here: nothing to play
        assert voice["performance"] == {"rtf": None}

    calm = gateway.get("/v1/tts/voices", params={"mood": "calm"}, headers=AUTH).json()
    assert {v["id"] for v in calm["voices"]} == {JOE, "kokoro-af_nicole", "kokoro-bf_emma"}
    assert all("calm" in v["moods"] for v in calm["voices"])
    male_gb = gateway.get(
        "/v1/tts/voices",
        params={"gender": "male", "language": "en-GB", "model": "kokoro-en-v0_19"},
        headers=AUTH,
    ).json()
    assert {v["id"] for v in male_gb["voices"]} == {"kokoro-bm_george", "kokoro-bm_lewis"}
    assert male_gb["filters_applied"] == {
        "gender": "male",
        "language": "en-GB",
        "model": "kokoro-en-v0_19",
    }
    unknown = gateway.get("/v1/tts/voices", params={"model": "nope"}, headers=AUTH)
    assert "kokoro-en-v0_19" in assert_error(unknown, 404, "unknown_model")
    bad_gender = gateway.get("/v1/tts/voices", params={"gender": "robot"}, headers=AUTH)
    assert_error(bad_gender, 422, "validation_error")
    assert_error(
        gateway.get("/v1/tts/voices", params={"page": 0}, headers=AUTH), 422, "validation_error"
    )


def test_a_voice_shows_the_rtf_measured_from_its_recent_requests(gateway: TestClient) -> None:
    body = {"text": TEXT, "voice_id": JOE, "format": "json"}
    made = gateway.post("/v1/tts/synthesize", json=body, headers=AUTH).json()
    listed = gateway.get("/v1/tts/voices", params={"mood": "calm"}, headers=AUTH).json()
    joe = next(v for v in listed["voices"] if v["id"] == JOE)
    rtf = joe["performance"]["rtf"]
    assert rtf is not None and 0 < rtf < 2
    assert joe["sample_url"] == f"/v1/tts/samples/{JOE}.wav"
    # A moving average of requests like this one: the same order of magnitude.
    assert rtf / 10 < made["metadata"]["rtf"] < rtf * 10


@pytest.mark.parametrize(
    ("path", "params", "voice_id"),
    [
        (f"/v1/tts/voices/{JOE}", {}, JOE),
        ("/v1/tts/voices/0", {}, JOE),  # a speaker index of the default voice's model
        (f"/v1/tts/voices/{JOE_MODEL}:0", {}, JOE),
        ("/v1/tts/voices/77", {"model": "vits-zh-aishell3"}, "zh-aishell3-77"),
        ("/v1/tts/voices/vits-zh-aishell3:77", {}, "zh-aishell3-77"),
    ],
)
def test_one_voice_by_id_or_by_the_speaker_index_form(
    gateway: TestClient, path: str, params: dict[str, str], voice_id: str
) -> None:
    response = gateway.get(path, params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    voice = response.json()
    assert voice["id"] == voice_id
    assert gateway.get(f"/v1/tts/voices/{voice['speaker_ref']}", headers=AUTH).json()["id"] == (
        voice_id
    )
    if voice["installed"]:
        assert voice["sample"]["duration_s"] > 1
        assert voice["sample_url"] == f"/v1/tts/samples/{voice_id}.wav"
    else:
        assert voice["sample"] is None and voice["sample_url"] is None


def test_an_unknown_voice_or_speaker_is_a_404(gateway: TestClient) -> None:
    assert_error(gateway.get("/v1/tts/voices/nobody", headers=AUTH), 404, "unknown_voice")
    missing = gateway.get("/v1/tts/voices/174", params={"model": "vits-zh-aishell3"}, headers=AUTH)
    assert "0..173" in assert_error(missing, 404, "unknown_voice")


def test_a_sample_is_a_playable_wav_of_the_voice(gateway: TestClient) -> None:
    response = gateway.get(f"/v1/tts/samples/{JOE}.wav", headers=AUTH)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "audio/wav"
    samples, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 22050 and 1.5 < len(samples) / rate < 8
    by_index = gateway.get("/v1/tts/samples/0.wav", params={"model": JOE_MODEL}, headers=AUTH)
    assert by_index.content == response.content  # the same voice, the cached sample
    not_here = gateway.get("/v1/tts/samples/kokoro-af.wav", headers=AUTH)
    assert_error(not_here, 404, "voice_not_installed")


# ---------------------------------------------------------------- compare


def test_compare_measures_each_candidate_and_explains_its_recommendation(
    gateway: TestClient,
) -> None:
    body = {
        "text": "Which of these two settings sounds better to you?",
        "candidates": [
            {"model": JOE_MODEL, "voice_id": 0},
            {"model": JOE_MODEL, "voice_id": 0, "speed": 1.4},
        ],
        "metrics": ["latency_ms", "rtf"],
    }
    response = gateway.post("/v1/tts/compare", json=body, headers=AUTH)
    assert response.status_code == 200, response.text
    answer = response.json()
    results = answer["results"]
    assert len(results) == 2
    assert [r["preferred"] for r in results].count(True) == 1
    recommendation = answer["recommendation"]
    assert recommendation["for"] == "latency_ms"
    preferred = next(r for r in results if r["preferred"])
    assert recommendation["recommended"] == preferred["voice_id"] == 0
    assert preferred["metrics"]["latency_ms"] == min(r["metrics"]["latency_ms"] for r in results)
    reason = recommendation["reason"]
    assert "lowest" in reason and "median" in reason
    for result in results:
        assert f"latency_ms {result['metrics']['latency_ms']:.4g}" in reason
        assert result["voice_name"] == "Joe" and result["model"] == JOE_MODEL
        metrics = result["metrics"]
        assert metrics["latency_ms"] > 0 and 0 < metrics["rtf"] < 2
        audio = gateway.get(result["audio_url"], headers=AUTH)
        samples, rate = soundfile.read(io.BytesIO(audio.content))
        assert len(samples) / rate == pytest.approx(metrics["duration_seconds"], abs=0.05)
        assert_error(gateway.get(result["audio_url"], headers=OTHER), 403, "forbidden")
    slow, fast = (r["metrics"]["duration_seconds"] for r in results)
    assert fast < slow * 0.85  # speed 1.4 speaks the same text in less time


def test_compare_refuses_unknown_voices_and_metrics(gateway: TestClient) -> None:
    unknown = {"text": "Hi.", "candidates": [{"voice_id": "nobody"}]}
    response = gateway.post("/v1/tts/compare", json=unknown, headers=AUTH)
    assert_error(response, 404, "unknown_voice")
    metric = {"text": "Hi.", "candidates": [{"voice_id": JOE}], "metrics": ["loudness"]}
    response = gateway.post("/v1/tts/compare", json=metric, headers=AUTH)
    assert "metrics" in assert_error(response, 422, "validation_error")
    empty = {"text": "Hi.", "candidates": []}
    assert_error(gateway.post("/v1/tts/compare", json=empty, headers=AUTH), 422, "validation_error")
