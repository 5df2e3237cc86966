"""The specification's TTS REST API against the running mesh, by a client written from the spec.

A gateway with two client keys joins the session mesh's Redis, so behind it is the real
``tts_vits`` replica with the bundled Piper voice, as it registers itself. The client
below knows only the specification: ``text``, ``model``, ``voice_id``, ``speed``,
``volume_db``, ``format``, ``sample_rate`` to ``POST /v1/tts/synthesize``; the listing's
``voices``, ``pagination`` and ``filters_applied``; ``POST /v1/tts/compare`` with
``candidates`` and ``metrics``; the answers' field names.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest
import soundfile

from tests.harness import start_routing_gateway
from tests.integration.conftest import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "tts-integration-key"
OTHER_KEY = "tts-integration-other"


@pytest.fixture(scope="module")
def tts_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway on the mesh's Redis; its base URL once it routes to the TTS replica."""
    env = {
        "VOICEMESH_REDIS_URL": mesh.redis.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([KEY, OTHER_KEY]),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    gateway = start_routing_gateway(env, tmp_path_factory.mktemp("tts-api"))
    try:
        yield gateway.url
    finally:
        gateway.stop()


class TtsClient:
    """A client of the specification's TTS API, nothing VoiceMesh-specific in it."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def post(self, path: str, body: dict[str, Any]) -> httpx.Response:
        """POST a JSON body."""
        return httpx.post(f"{self.base_url}{path}", json=body, headers=self.headers, timeout=120)

    def get(self, path: str, **params: Any) -> httpx.Response:
        """GET with query parameters."""
        return httpx.get(f"{self.base_url}{path}", params=params, headers=self.headers, timeout=120)


@pytest.fixture(scope="module")
def client(tts_gateway: str) -> TtsClient:
    """The client with the first key."""
    return TtsClient(tts_gateway, KEY)


def error_code(response: httpx.Response) -> str:
    """The ``code`` of an error answer."""
    return str(response.json()["error"]["code"])


def test_synthesize_json_then_fetch_the_audio_url_with_the_same_key_only(
    client: TtsClient, tts_gateway: str
) -> None:
    answer = client.post(
        "/v1/tts/synthesize",
        {"text": "The specification asks for a link to the audio.", "format": "json"},
    )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["success"] is True
    for field in ("audio_url", "model", "voice_id", "voice_name", "duration_seconds"):
        assert body[field], field
    assert body["processing_time_ms"] > 0
    assert set(body["metadata"]) >= {"rtf", "sample_rate", "channels", "bits_per_sample"}
    audio = client.get(body["audio_url"])
    assert audio.status_code == 200
    samples, rate = soundfile.read(io.BytesIO(audio.content))
    assert rate == body["metadata"]["sample_rate"]
    assert len(samples) / rate == pytest.approx(body["duration_seconds"], abs=0.01)
    other = TtsClient(tts_gateway, OTHER_KEY).get(body["audio_url"])
    assert other.status_code == 403


def test_volume_up_to_25_db_is_louder_without_clipping(client: TtsClient) -> None:
    def samples(volume_db: float) -> np.ndarray:
        body = {"text": "Loud and clear, please.", "format": "wav", "volume_db": volume_db}
        response = client.post("/v1/tts/synthesize", body)
        assert response.status_code == 200, response.text
        audio, _ = soundfile.read(io.BytesIO(response.content), dtype="int16")
        return np.abs(audio.astype(np.int32))

    normal, loud = samples(0), samples(25)
    assert np.sqrt(np.mean(loud.astype(float) ** 2)) > 3 * np.sqrt(
        np.mean(normal.astype(float) ** 2)
    )
    assert int(loud.max()) < 32767
    assert client.post("/v1/tts/synthesize", {"text": "Hi.", "volume_db": 26}).status_code == 422


def test_unknown_fields_voices_and_models_are_refused(client: TtsClient) -> None:
    typo = client.post("/v1/tts/synthesize", {"text": "Hi.", "voice_id": 0, "sped": 1.2})
    assert typo.status_code == 422 and "sped" in typo.json()["error"]["message"]
    assert error_code(typo) == "unknown_field"
    model = client.post("/v1/tts/synthesize", {"text": "Hi.", "model": "nope", "voice_id": 3})
    assert model.status_code == 404 and error_code(model) == "unknown_model"
    speaker = client.post(
        "/v1/tts/synthesize", {"text": "Hi.", "model": "piper-en_US-joe-medium", "voice_id": 9}
    )
    assert speaker.status_code == 404 and error_code(speaker) == "unknown_voice"
    wrong_key = TtsClient(client.base_url, "not-a-key").post("/v1/tts/synthesize", {"text": "Hi."})
    assert wrong_key.status_code == 401


def test_voices_are_paged_filtered_and_reachable_by_speaker_index(client: TtsClient) -> None:
    listing = client.get("/v1/tts/voices", language="en", gender="female", page=1, limit=5)
    assert listing.status_code == 200, listing.text
    body = listing.json()
    pagination = body["pagination"]
    assert pagination["page"] == 1 and pagination["limit"] == 5
    assert pagination["total_pages"] == -(-pagination["total"] // 5)
    assert body["filters_applied"] == {"language": "en", "gender": "female"}
    assert 0 < len(body["voices"]) <= 5
    for voice in body["voices"]:
        assert voice["gender"] == "female" and voice["language"].startswith("en")
        assert {"id", "name", "model", "moods", "sample_url", "performance", "tags"} <= set(voice)
    calm = client.get("/v1/tts/voices", mood="calm").json()["voices"]
    assert calm and all("calm" in v["moods"] for v in calm)
    by_index = client.get("/v1/tts/voices/77", model="vits-zh-aishell3")
    assert by_index.status_code == 200 and by_index.json()["id"] == "zh-aishell3-77"
    joe = next(v for v in calm if v["sample_url"])
    sample = client.get(joe["sample_url"])
    assert sample.status_code == 200 and sample.headers["content-type"] == "audio/wav"
    assert soundfile.info(io.BytesIO(sample.content)).duration > 1


def test_compare_recommends_with_a_reason_that_gives_its_numbers(client: TtsClient) -> None:
    response = client.post(
        "/v1/tts/compare",
        {
            "text": "Two speeds, one text.",
            "candidates": [
                {"model": "piper-en_US-joe-medium", "voice_id": 0},
                {"model": "piper-en_US-joe-medium", "voice_id": 0, "speed": 1.3},
            ],
            "metrics": ["rtf", "latency_ms"],
        },
    )
    assert response.status_code == 200, response.text
    body = response.json()
    results = body["results"]
    assert len(results) == 2 and sum(r["preferred"] for r in results) == 1
    recommendation = body["recommendation"]
    assert recommendation["for"] == "rtf"
    for result in results:
        assert f"rtf {result['metrics']['rtf']:.4g}" in recommendation["reason"]
        assert client.get(result["audio_url"]).status_code == 200
    best = min(results, key=lambda r: r["metrics"]["rtf"])
    assert best["preferred"]
