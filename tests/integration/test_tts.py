"""Text-to-speech through the mesh: the real Piper voice, judged by the real Whisper base.

Every English reference sentence of the shared manifest is synthesised once by
``tts_vits`` (four requests at a time, so the run also shows concurrent requests
keep their own audio) and transcribed by ``stt_cpu_ws``; the gateway routes are
exercised with httpx and with the official ``openai`` client.
"""

from __future__ import annotations

import io
import json
import re
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
import jiwer
import numpy as np
import openai
import pytest
import redis
import soundfile
from num2words import num2words

from tests.harness import ServiceProcess, free_port, load_manifest, normalize
from tests.integration.conftest import Mesh
from voicemesh.registry import ReplicaInfo
from voicemesh.tts.text import normalize_text, split_for_streaming, split_sentences

pytestmark = pytest.mark.integration

WER_LIMIT = 0.09
"""The issue asks for 5%, which the bundled voice does not reach with Whisper base. With
tts_vits's defaults (noise_scale 0.333, noise_w 0) eight in-process runs of
``benchmarks/tts_roundtrip.py`` measured 5.3-7.6% (mean 6.3%; the voice's own 0.667 gave
6.3-7.9%, mean 6.8%); even noiseless synthesis gives 4.6-7.3% depending on small changes of
speed. The misheard words are the voice's (espeak's "Gutenberg", reduced "his", "but", final
"s"/"d"), not the text handling. This bound catches a regression (a broken phonemiser or
mixed audio gives far more) without failing on a draw."""
ENGLISH = [clip for clip in load_manifest() if clip.language == "en"]
_NUMBER = re.compile(r"(\d[\d,]*)(st|nd|rd|th)?\b")


def spoken_numbers(text: str) -> str:
    """Whisper writes "1813", "15th", "42-line"; the references spell them out."""

    def words(match: re.Match[str]) -> str:
        value = int(match.group(1).replace(",", ""))
        if match.group(2):
            return str(num2words(value, to="ordinal"))
        if 1100 <= value <= 1999:  # years are read as "eighteen thirteen"
            return str(num2words(value, to="year"))
        return str(num2words(value))

    return _NUMBER.sub(words, text)


def words(text: str) -> str:
    """The comparison form of a text: the shared normaliser after spelling out numbers."""
    return " ".join(normalize(spoken_numbers(text)))


def transcribe(stt_url: str, wav: bytes) -> str:
    """The STT service's transcript of a WAV file."""
    response = httpx.post(
        f"{stt_url}/v1/transcribe",
        files={"file": ("tts.wav", wav)},
        data={"language": "en", "response_format": "json"},
        timeout=120,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


@dataclass(frozen=True)
class RoundTrip:
    """One reference sentence, what the voice made of it and what Whisper heard."""

    reference: str
    wav: bytes
    duration_s: float
    transcript: str


@pytest.fixture(scope="module")
def round_trips(mesh: Mesh) -> list[RoundTrip]:
    """Every English sentence synthesised (4 at a time) and then transcribed, once."""

    def synthesise(text: str) -> tuple[bytes, float]:
        response = httpx.post(
            f"{mesh.tts_vits.url}/v1/synthesize", json={"text": text, "format": "wav"}, timeout=120
        )
        assert response.status_code == 200, response.text
        return response.content, float(response.headers["x-voicemesh-duration"])

    with ThreadPoolExecutor(4) as pool:
        audio = list(pool.map(synthesise, [clip.text for clip in ENGLISH]))
    return [
        RoundTrip(clip.text, wav, seconds, transcribe(mesh.stt_cpu.url, wav))
        for clip, (wav, seconds) in zip(ENGLISH, audio, strict=True)
    ]


def test_whisper_understands_the_voice(round_trips: list[RoundTrip]) -> None:
    references = [words(t.reference) for t in round_trips]
    heard = [words(t.transcript) for t in round_trips]
    wer = jiwer.wer(references, heard)
    detail = "\n".join(f"{r!r} -> {h!r}" for r, h in zip(references, heard, strict=True) if r != h)
    print(f"aggregate WER {wer:.3f} over {len(references)} sentences")
    assert wer <= WER_LIMIT, f"aggregate WER {wer:.3f}\n{detail}"


def test_concurrent_requests_each_get_their_own_audio(round_trips: list[RoundTrip]) -> None:
    references = [words(t.reference) for t in round_trips]
    for trip, own in zip(round_trips, references, strict=True):
        heard = words(trip.transcript)
        own_wer = jiwer.wer(own, heard)
        assert own_wer <= 0.5, (trip.reference, trip.transcript)
        others = [jiwer.wer(ref, heard) for ref in references if ref != own]
        assert own_wer < min(others), (trip.reference, trip.transcript)
        # The audio's length fits its own text (mixed audio would be far off).
        seconds_per_word = trip.duration_s / len(own.split())
        assert 0.2 < seconds_per_word < 0.8, (trip.reference, trip.duration_s)


def _pcm_wav(pcm: bytes, rate: int) -> bytes:
    buffer = io.BytesIO()
    samples = np.frombuffer(pcm, dtype="<i2")
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def test_streaming_with_a_short_first_piece_keeps_length_and_intelligibility(
    mesh: Mesh, round_trips: list[RoundTrip]
) -> None:
    """Streamed, a long first sentence is spoken in two pieces (the first one short, for a
    fast first audio); joined, they last as long as the whole sentence and Whisper hears
    them as well."""
    cut = [
        trip
        for trip in round_trips
        if len(split_for_streaming(normalize_text(trip.reference)))
        > len(split_sentences(normalize_text(trip.reference)))
    ]
    assert len(cut) >= 5, "the reference sentences no longer exercise the first-piece cut"
    references, heard = [], []
    for trip in cut:
        with httpx.stream(
            "POST",
            f"{mesh.tts_vits.url}/v1/synthesize",
            json={"text": trip.reference, "format": "pcm", "stream": True},
            timeout=120,
        ) as response:
            assert response.status_code == 200, response.read()
            rate = int(response.headers["x-voicemesh-sample-rate"])
            chunks = [chunk for chunk in response.iter_bytes() if chunk]
        pcm = b"".join(chunks)
        seconds = len(pcm) / 2 / rate
        assert abs(seconds - trip.duration_s) / trip.duration_s < 0.05, (
            trip.reference,
            seconds,
            trip.duration_s,
        )
        references.append(words(trip.reference))
        heard.append(words(transcribe(mesh.stt_cpu.url, _pcm_wav(pcm, rate))))
    whole = jiwer.wer(references, [words(t.transcript) for t in cut])
    streamed = jiwer.wer(references, heard)
    print(f"{len(cut)} sentences cut: WER streamed {streamed:.3f}, whole {whole:.3f}")
    assert streamed <= WER_LIMIT, list(zip(references, heard, strict=True))


@pytest.fixture(scope="module")
def gateway(mesh: Mesh) -> Iterator[httpx.Client]:
    """An HTTP client for the mesh's gateway."""
    with httpx.Client(base_url=mesh.gateway.url, timeout=120) as client:
        yield client


def test_openai_speech_route_with_the_official_client(mesh: Mesh) -> None:
    text = "Today only platforms one and three are used."
    with openai.OpenAI(
        base_url=f"{mesh.gateway.url}/v1", api_key="unused", max_retries=0, timeout=120
    ) as client:
        raw = client.audio.speech.with_raw_response.create(
            model="tts-1", voice="alloy", input=text, response_format="wav"
        )
        assert raw.headers["x-voicemesh-engine"] == "sherpa-onnx/piper"
        assert raw.headers["x-voicemesh-voice"] == "en_US-joe-medium"
        wav = raw.content
        with client.audio.speech.with_streaming_response.create(
            model="tts-1", voice="en_US-joe-medium", input=text, response_format="mp3", speed=1.25
        ) as streamed:
            mp3 = b"".join(streamed.iter_bytes())
        pcm = client.audio.speech.create(
            model="tts-1", voice="nova", input=text, response_format="pcm"
        ).read()
        with pytest.raises(openai.NotFoundError) as unknown:
            client.audio.speech.create(model="tts-1", voice="nobody", input=text)
        assert unknown.value.body["code"] == "unknown_voice"  # type: ignore[index]
        with pytest.raises(openai.BadRequestError):
            client.audio.speech.create(
                model="tts-1", voice="alloy", input=text, response_format="aac"
            )
    audio, rate = soundfile.read(io.BytesIO(_fix_stream_wav(wav)))
    assert rate == 22050 and 2.0 < len(audio) / rate < 5.0
    assert jiwer.wer(words(text), words(transcribe(mesh.stt_cpu.url, wav))) <= 0.25
    assert jiwer.wer(words(text), words(transcribe(mesh.stt_cpu.url, mp3))) <= 0.25
    pcm_s = len(pcm) / 2 / 24000  # OpenAI's pcm: 24 kHz 16-bit mono
    assert 1.5 < pcm_s < 5.0


def _fix_stream_wav(data: bytes) -> bytes:
    """A streamed WAV has "unknown" sizes; fill them in for readers that insist."""
    body = len(data) - 44
    return (
        data[:4]
        + (36 + body).to_bytes(4, "little")
        + data[8:40]
        + body.to_bytes(4, "little")
        + data[44:]
    )


def test_gateway_tts_routes_pass_through_with_engine_headers(gateway: httpx.Client) -> None:
    voices = gateway.get("/v1/tts/voices", params={"installed": "true"})
    assert voices.status_code == 200
    assert [v["id"] for v in voices.json()["voices"]] == ["en_US-joe-medium"]
    assert voices.headers["x-voicemesh-backend"].startswith("http://127.0.0.1:")
    detail = gateway.get("/v1/tts/voices/en_US-joe-medium").json()
    assert detail["sample"]["duration_s"] > 1

    chunks: list[bytes] = []
    with gateway.stream(
        "POST",
        "/v1/tts/synthesize",
        json={
            "text": "One sentence here. Another one there. And the last one.",
            "format": "pcm",
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-voicemesh-voice"] == "en_US-joe-medium"
        assert response.headers["x-voicemesh-engine"] == "sherpa-onnx/piper"
        chunks = list(response.iter_raw())
    assert len(chunks) > 1
    assert 3.0 < sum(map(len, chunks)) / 2 / 22050 < 8.0

    compare = gateway.post(
        "/v1/tts/compare",
        json={
            "text": "Which one sounds better?",
            "candidates": [
                {"voice": "en_US-joe-medium", "speed": 0.8},
                {"voice": "en_US-joe-medium", "speed": 1.2},
            ],
        },
    )
    assert compare.status_code == 200
    assert len(compare.json()["candidates"]) == 2
    assert "rule" in compare.json()["recommendation"]

    for body, status, code in (
        ({"text": "x" * 5001}, 413, "text_too_long"),
        ({"text": "Hi.", "voice": "nobody"}, 404, "unknown_voice"),
        ({"text": "Hi.", "speed": 9}, 422, "validation_error"),
    ):
        response = gateway.post("/v1/tts/synthesize", json=body)
        assert response.status_code == status
        assert response.json()["error"]["code"] == code
    # The body is validated by the gateway like every JSON body of its own API.
    not_an_object = gateway.post(
        "/v1/tts/synthesize", content=b"[1, 2]", headers={"content-type": "application/json"}
    )
    assert not_an_object.status_code == 422
    assert not_an_object.json()["error"]["code"] == "validation_error"


def test_gateway_fails_over_past_a_dead_tts_replica(mesh: Mesh, tmp_path: Path) -> None:
    """A registered replica that does not answer is skipped; the request still succeeds."""
    now = time.time()
    dead = ReplicaInfo(
        instance_id="0-dead-tts",
        kind="tts_vits",
        url=f"http://127.0.0.1:{free_port()}",
        model="en_US-joe-medium",
        capabilities=["synthesize", "stream", "compare", "voices"],
        started_at=now,
        updated_at=now,
    )
    store = redis.Redis.from_url(mesh.redis.url)
    key = f"voicemesh:replica:tts_vits:{dead.instance_id}"
    store.set(key, dead.model_dump_json(), ex=60)
    # A gateway of its own that never probes: the request itself meets the dead replica.
    env = {
        "VOICEMESH_REDIS_URL": mesh.redis.url,
        "VOICEMESH_GATEWAY_PROBE_INTERVAL_S": "0",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    own = ServiceProcess("gateway", free_port(), env, tmp_path).start()
    try:
        own.wait_healthy(timeout_s=60)
        # Both replicas, the dead one and the mesh's, are in the gateway's view.
        deadline = time.monotonic() + 30
        while httpx.get(f"{own.url}/health", timeout=5).json()["replicas"].get("tts_vits") != 2:
            assert time.monotonic() < deadline, "the gateway never listed both TTS replicas"
            time.sleep(0.2)
        response = httpx.post(
            f"{own.url}/v1/audio/speech",
            timeout=120,
            json={
                # A catalogue id, not an OpenAI name: no voice lookup meets the dead replica first.
                "model": "tts-1",
                "voice": "en_US-joe-medium",
                "input": "Still here.",
                "response_format": "wav",
            },
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-voicemesh-failover"] == "1"
        assert response.headers["x-voicemesh-backend"] == mesh.tts_vits.url
        assert len(response.content) > 44 + 22050
    finally:
        own.stop()
        store.delete(key)
        store.close()


def test_registry_lists_the_tts_replica_with_its_load(mesh: Mesh) -> None:
    store = redis.Redis.from_url(mesh.redis.url, decode_responses=True)
    try:
        keys = store.keys("voicemesh:replica:tts_vits:*")
        infos = [ReplicaInfo.model_validate(json.loads(store.get(k) or "{}")) for k in keys]
    finally:
        store.close()
    mine = [i for i in infos if i.url == mesh.tts_vits.url]
    assert len(mine) == 1
    assert mine[0].engine == "sherpa-onnx" and "synthesize" in mine[0].capabilities
    assert mine[0].load.max_sessions and mine[0].load.max_sessions > 1
