"""``POST /v1/audio/transcriptions`` through the gateway, with the official ``openai`` client.

The session's mesh (real Redis, detector, CPU STT and gateway on loopback) serves
the formats; gateways of their own, with static backend lists and no Redis, show
failover past a dead replica and the answer when no replica is left.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gateway.settings import GatewaySettings
from tests.harness import ServiceProcess, clip_named, error_rate, free_port
from tests.integration.conftest import Mesh

pytestmark = pytest.mark.integration

JFK = clip_named("whisper-jfk.wav")
WER_LIMIT = 15.0
CUE_TIME = re.compile(
    r"^(\d{2}):(\d{2}):(\d{2})[,.](\d{3}) --> (\d{2}):(\d{2}):(\d{2})[,.](\d{3})$"
)


def openai_client(base_url: str) -> openai.OpenAI:
    """The official client pointed at a gateway; no retries, so each call is one request."""
    return openai.OpenAI(base_url=f"{base_url}/v1", api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def client(mesh: Mesh) -> Iterator[openai.OpenAI]:
    """The official client pointed at the mesh's gateway."""
    with openai_client(mesh.gateway.url) as c:
        yield c


def start_static_gateway(backend_urls: list[str], log_dir: Path) -> ServiceProcess:
    """A gateway of its own that knows only ``backend_urls`` (no Redis)."""
    env = {
        "VOICEMESH_REDIS_URL": "",
        # No health probes: the request itself must discover the dead backend.
        "VOICEMESH_GATEWAY_PROBE_INTERVAL_S": "0",
        "VOICEMESH_GATEWAY_BACKEND_URLS": json.dumps(backend_urls),
        # Held out for longer than a transcription takes on a loaded machine, so the
        # tests see the hold whatever the load.
        "VOICEMESH_GATEWAY_FAILED_HOLD_S": "120",
    }
    gateway = ServiceProcess("gateway", free_port(), env, log_dir).start()
    try:
        gateway.wait_healthy(timeout_s=60)
    except BaseException:
        gateway.stop()
        raise
    return gateway


def dead_url() -> str:
    """A loopback URL nothing listens on."""
    return f"http://127.0.0.1:{free_port()}"


def cues(subtitles: str) -> list[tuple[float, float, str]]:
    """(start, end, text) of each cue of an SRT or WebVTT document."""
    out = []
    lines = subtitles.splitlines()
    for index, line in enumerate(lines):
        match = CUE_TIME.match(line.strip())
        if match is None:
            continue
        h1, m1, s1, ms1, h2, m2, s2, ms2 = (int(g) for g in match.groups())
        text = []
        for following in lines[index + 1 :]:
            if not following.strip():
                break
            text.append(following.strip())
        out.append(
            (
                h1 * 3600 + m1 * 60 + s1 + ms1 / 1000,
                h2 * 3600 + m2 * 60 + s2 + ms2 / 1000,
                " ".join(text),
            )
        )
    return out


def assert_ordered_cues(found: list[tuple[float, float, str]]) -> None:
    """Cue times move forward and stay inside the clip."""
    assert found, "no cues"
    previous_start = 0.0
    for start, end, text in found:
        assert text
        assert previous_start <= start <= end <= JFK.duration_s + 0.5, found
        previous_start = start


# ---------------------------------------------------------------- formats


def test_json_gives_the_transcript(client: openai.OpenAI, mesh: Mesh) -> None:
    with open(JFK.path, "rb") as audio:
        raw = client.audio.transcriptions.with_raw_response.create(model="whisper-1", file=audio)
    result = raw.parse()
    assert error_rate(JFK.text, result.text) <= WER_LIMIT, result.text
    assert raw.headers["content-type"].startswith("application/json")
    # Every fallback is visible: who served it, on what, and no failover this time.
    assert raw.headers["x-voicemesh-backend"] == mesh.stt_cpu.url
    assert raw.headers["x-voicemesh-engine"].endswith("/cpu")
    served = httpx.get(f"{mesh.stt_cpu.url}/health", timeout=5).json()["model"]
    assert raw.headers["x-voicemesh-model"] == served
    assert "x-voicemesh-failover" not in raw.headers
    assert raw.headers["x-request-id"]


def test_text_is_plain(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio:
        text = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="text"
        )
    assert isinstance(text, str)
    assert not text.lstrip().startswith("{")
    assert error_rate(JFK.text, text) <= WER_LIMIT, text


def test_srt_has_numbered_timed_cues(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio:
        srt = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="srt"
        )
    assert isinstance(srt, str)
    assert srt.startswith("1\n"), srt
    found = cues(srt)
    assert " --> " in srt and "," in srt.splitlines()[1], srt
    assert_ordered_cues(found)
    assert error_rate(JFK.text, " ".join(text for _, _, text in found)) <= WER_LIMIT, srt


def test_vtt_has_a_header_and_timed_cues(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio:
        vtt = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="vtt"
        )
    assert isinstance(vtt, str)
    assert vtt.startswith("WEBVTT"), vtt
    found = cues(vtt)
    assert_ordered_cues(found)
    assert error_rate(JFK.text, " ".join(text for _, _, text in found)) <= WER_LIMIT, vtt


def test_verbose_json_with_word_and_segment_times(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.language == "en"
    assert abs(result.duration - JFK.duration_s) < 0.5
    assert error_rate(JFK.text, result.text) <= WER_LIMIT, result.text
    assert result.segments, "no segments"
    segment_starts = [s.start for s in result.segments]
    assert segment_starts == sorted(segment_starts)
    assert all(s.start <= s.end for s in result.segments)
    words = result.words or []
    assert len(words) >= 15, words
    assert error_rate(JFK.text, " ".join(w.word for w in words)) <= WER_LIMIT
    previous_start = 0.0
    for word in words:
        assert previous_start <= word.start <= word.end <= JFK.duration_s + 0.5, word
        previous_start = word.start


def test_verbose_json_without_word_granularity_has_no_words(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio:
        result = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            timestamp_granularities=["segment"],
        )
    assert result.segments
    assert not result.words


def test_language_hint_reaches_the_decoder(client: openai.OpenAI) -> None:
    # The clip is English and detected as such; a forced language is reported back.
    with open(JFK.path, "rb") as audio:
        forced = client.audio.transcriptions.create(
            model="whisper-1", file=audio, response_format="verbose_json", language="de"
        )
    assert forced.language == "de"
    with open(JFK.path, "rb") as audio:
        english = client.audio.transcriptions.create(
            model="whisper-1",
            file=audio,
            response_format="verbose_json",
            language="en",
            temperature=0.2,
        )
    assert english.language == "en"
    assert error_rate(JFK.text, english.text) <= WER_LIMIT, english.text


def test_prompt_steers_the_style_of_the_transcript(client: openai.OpenAI) -> None:
    # Whisper continues the prompt's style: without one this clip comes back
    # capitalised and punctuated, after an all lower-case unpunctuated prompt it does not.
    with open(JFK.path, "rb") as audio:
        plain = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert "Americans," in plain.text, plain.text
    with open(JFK.path, "rb") as audio:
        steered = client.audio.transcriptions.create(
            model="any-model-name",
            file=audio,
            prompt="and so my fellow americans ask not what your country can do for you",
        )
    assert steered.text == steered.text.lower(), steered.text
    assert not re.search(r"[,.]", steered.text), steered.text
    assert error_rate(JFK.text, steered.text) <= WER_LIMIT, steered.text


# ---------------------------------------------------------------- the caller's mistakes


def test_corrupt_file_is_a_bad_request_and_the_gateway_lives_on(
    client: openai.OpenAI, mesh: Mesh
) -> None:
    garbage = b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 8
    with pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1",
            file=("broken.wav", garbage),
            extra_headers={"X-Request-ID": "corrupt-upload-1"},
        )
    assert caught.value.status_code == 400
    error = caught.value.response.json()["error"]
    assert error["code"] == "undecodable_audio", error
    assert error["request_id"] == "corrupt-upload-1"
    # A 4xx is not the replica's fault: no failover, and the replica stays routable.
    assert "x-voicemesh-failover" not in caught.value.response.headers
    health = httpx.get(f"{mesh.gateway.url}/health", timeout=5)
    assert health.status_code == 200
    assert health.json()["stt_route"] == [mesh.stt_cpu.url]
    with open(JFK.path, "rb") as audio:
        after = client.audio.transcriptions.create(model="whisper-1", file=audio)
    assert error_rate(JFK.text, after.text) <= WER_LIMIT


def test_unknown_language_is_passed_through_as_400(client: openai.OpenAI) -> None:
    with open(JFK.path, "rb") as audio, pytest.raises(openai.BadRequestError) as caught:
        client.audio.transcriptions.create(model="whisper-1", file=audio, language="xx")
    assert caught.value.response.json()["error"]["code"] == "bad_language"


def test_unknown_response_format_is_a_validation_error(mesh: Mesh) -> None:
    response = httpx.post(
        f"{mesh.gateway.url}/v1/audio/transcriptions",
        files={"file": ("jfk.wav", JFK.path.read_bytes(), "audio/wav")},
        data={"model": "whisper-1", "response_format": "lrc-ish"},
        timeout=30,
    )
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_file_over_the_limit_is_413(client: openai.OpenAI, mesh: Mesh) -> None:
    # The mesh's gateway runs with the default limit.
    limit = GatewaySettings.model_fields["max_upload_bytes"].default
    with pytest.raises(openai.APIStatusError) as caught:
        client.audio.transcriptions.create(
            model="whisper-1", file=("huge.wav", b"\0" * (limit + 1))
        )
    assert caught.value.status_code == 413
    assert caught.value.response.json()["error"]["code"] == "file_too_large"
    assert httpx.get(f"{mesh.gateway.url}/health", timeout=5).status_code == 200


# ---------------------------------------------------------------- failover


def test_dead_backend_is_skipped_and_the_failover_is_named(mesh: Mesh, tmp_path: Path) -> None:
    dead = dead_url()
    gateway = start_static_gateway([dead, mesh.stt_cpu.url], tmp_path)
    try:
        route = httpx.get(f"{gateway.url}/health", timeout=5).json()["stt_route"]
        assert route[0] == dead, "the dead backend must be tried first for this test"
        with openai_client(gateway.url) as client, open(JFK.path, "rb") as audio:
            raw = client.audio.transcriptions.with_raw_response.create(
                model="whisper-1", file=audio, response_format="verbose_json"
            )
        result = raw.parse()
        assert raw.status_code == 200
        assert raw.headers["x-voicemesh-failover"] == "1"
        assert raw.headers["x-voicemesh-backend"] == mesh.stt_cpu.url
        assert raw.headers["x-voicemesh-engine"].endswith("/cpu")
        assert error_rate(JFK.text, result.text) <= WER_LIMIT, result.text
        # The failed replica is held out of routing for a while.
        assert httpx.get(f"{gateway.url}/health", timeout=5).json()["stt_route"] == [
            mesh.stt_cpu.url
        ]
    finally:
        gateway.stop()


def test_no_backend_left_is_503(tmp_path: Path) -> None:
    gateway = start_static_gateway([dead_url()], tmp_path)
    try:
        with (
            openai_client(gateway.url) as client,
            open(JFK.path, "rb") as audio,
            pytest.raises(openai.InternalServerError) as caught,
        ):
            client.audio.transcriptions.create(model="whisper-1", file=audio)
        assert caught.value.status_code == 503
        error = caught.value.response.json()["error"]
        assert error["code"] == "no_backend", error
        assert error["request_id"] == caught.value.response.headers["x-request-id"]
        # Now the dead replica is held out, so no backend is even tried.
        with open(JFK.path, "rb") as audio:
            again = httpx.post(
                f"{gateway.url}/v1/audio/transcriptions",
                files={"file": ("jfk.wav", audio, "audio/wav")},
                data={"model": "whisper-1"},
                timeout=30,
            )
        assert again.status_code == 503
        assert again.json()["error"]["code"] == "no_backend"
        assert httpx.get(f"{gateway.url}/health", timeout=5).status_code == 200
    finally:
        gateway.stop()
