"""The specification's ASR REST API against the running mesh, by a client written from the spec.

A gateway with client keys and a small upload limit joins the session mesh's Redis, so
behind it are the real CPU Whisper service and the real speech detector as they
register themselves. The client below knows only the specification: multipart
``audio``, ``model``, ``language``, ``response_format``, ``enable_diarization`` to
``POST /v1/asr/transcribe``, the JSON answer's field names, ``GET /v1/asr/models``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.harness import clip_named, error_rate, start_routing_gateway
from tests.integration.conftest import Mesh

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

KEY = "asr-integration-key"
UPLOAD_LIMIT = 512 * 1024
"""The gateway's upload limit here: the JFK clip (352 kB) fits, two of it do not."""
JFK = clip_named("whisper-jfk.wav")
WER_LIMIT = 15.0
CUE = re.compile(r"^(\d{2}):(\d{2}):(\d{2}),(\d{3}) --> (\d{2}):(\d{2}):(\d{2}),(\d{3})$")


@pytest.fixture(scope="module")
def asr_gateway(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A keyed gateway on the mesh's Redis; its base URL once it routes to the STT replica."""
    env = {
        "VOICEMESH_REDIS_URL": mesh.redis.url,
        "VOICEMESH_HOME": str(tmp_path_factory.getbasetemp() / "vmhome"),
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([KEY]),
        "VOICEMESH_GATEWAY_MAX_UPLOAD_BYTES": str(UPLOAD_LIMIT),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
    }
    gateway = start_routing_gateway(env, tmp_path_factory.mktemp("asr-api"))
    try:
        yield gateway.url
    finally:
        gateway.stop()


class AsrClient:
    """A client of the specification's ASR API, nothing VoiceMesh-specific in it."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {api_key}"}

    def transcribe(self, audio: bytes, filename: str = "speech.wav", **fields: str) -> Any:
        """``POST /v1/asr/transcribe`` with the file and the form fields given."""
        return httpx.post(
            f"{self.base_url}/v1/asr/transcribe",
            headers=self.headers,
            files={"audio": (filename, audio, "audio/wav")},
            data=fields,
            timeout=120,
        )

    def models(self) -> Any:
        """``GET /v1/asr/models``."""
        return httpx.get(f"{self.base_url}/v1/asr/models", headers=self.headers, timeout=10)


@pytest.fixture(scope="module")
def client(asr_gateway: str) -> AsrClient:
    return AsrClient(asr_gateway, KEY)


def error_of(response: Any, status: int) -> dict[str, Any]:
    """The error body of a refused request: code, message and the request id."""
    assert response.status_code == status, response.text
    error: dict[str, Any] = response.json()["error"]
    assert error["code"] and error["message"]
    assert error["request_id"] == response.headers["x-request-id"]
    return error


def test_json_answer(client: AsrClient) -> None:
    response = client.transcribe(JFK.path.read_bytes(), model="base", language="en")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["success"] is True and body["format"] == "json"
    assert body["model"] == "base" and body["language"] == "en"
    assert error_rate(JFK.text, body["text"]) <= WER_LIMIT, body["text"]
    assert 0 < body["confidence"] <= 1
    assert body["duration_seconds"] == pytest.approx(JFK.duration_s, abs=0.05)
    assert body["processing_time_ms"] > 0
    assert body["segments"]
    for segment in body["segments"]:
        assert set(segment) >= {"text", "start_time", "end_time", "confidence"}
        assert 0 <= segment["start_time"] <= segment["end_time"] <= JFK.duration_s + 0.5
        assert 0 < segment["confidence"] <= 1
    metadata = body["metadata"]
    assert metadata["engine"] == "faster-whisper/cpu"
    assert metadata["model_load_time_ms"] > 0 and metadata["rtf"] > 0


def test_srt_answer(client: AsrClient) -> None:
    response = client.transcribe(JFK.path.read_bytes(), response_format="srt")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/x-subrip")
    lines = response.text.splitlines()
    assert lines[0] == "1" and CUE.match(lines[1]), response.text
    words = " ".join(line for line in lines if line and not line.isdigit() and "-->" not in line)
    assert error_rate(JFK.text, words) <= WER_LIMIT, response.text


def test_models_name_base_as_default_and_tiny_en_as_detector_only(client: AsrClient) -> None:
    response = client.models()
    assert response.status_code == 200, response.text
    models = {m["id"]: m for m in response.json()["models"]}
    assert models["base"]["default"] is True and models["base"]["status"] == "loaded"
    assert models["base"]["capabilities"]["streaming"] is True
    # The real detector registers the tiny.en it confirms speech with.
    assert models["tiny.en"]["status"] == "loaded"
    assert models["tiny.en"]["transcribes_files"] is False
    for model in models.values():
        assert model["capabilities"]["diarization"] is False
        assert set(model["performance"]) == {"rtf", "latency_ms"}


def test_diarization_is_a_422(client: AsrClient) -> None:
    response = client.transcribe(JFK.path.read_bytes(), enable_diarization="true")
    assert "diarization" in error_of(response, 422)["message"]


def test_an_unknown_field_is_a_422_naming_it(client: AsrClient) -> None:
    response = client.transcribe(JFK.path.read_bytes(), speakers="2")
    assert "speakers" in error_of(response, 422)["message"]


def test_an_unknown_model_is_a_404(client: AsrClient) -> None:
    error = error_of(client.transcribe(JFK.path.read_bytes(), model="no-such-model"), 404)
    assert error["code"] == "unknown_model" and "base" in error["message"]


def test_a_detector_only_model_is_a_409(client: AsrClient) -> None:
    error = error_of(client.transcribe(JFK.path.read_bytes(), model="tiny.en"), 409)
    assert "base" in error["message"]


def test_oversized_audio_is_a_413(client: AsrClient) -> None:
    audio = JFK.path.read_bytes()
    assert len(audio) <= UPLOAD_LIMIT < 2 * len(audio)
    error_of(client.transcribe(audio + audio[44:]), 413)


def test_a_wrong_key_is_a_401(asr_gateway: str) -> None:
    wrong = AsrClient(asr_gateway, "not-the-key")
    assert error_of(wrong.transcribe(JFK.path.read_bytes()), 401)["code"] == "unauthorized"
    assert error_of(wrong.models(), 401)["code"] == "unauthorized"
