"""Cloned voices through the gateway: real Redis, ``tts_clone`` and the gateway as processes.

Two API keys: a profile made with one is invisible to the other (404 on every route,
OpenAI's speech route included); the cache's hit rate reaches ``/v1/admin/status``. The
mesh has an internal token, so tts_clone's own port, asked with A's key fingerprint
(issue 15), serves nobody but the gateway.
"""

from __future__ import annotations

import io
import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import soundfile

from gateway.keys import fingerprint
from tests.harness import SPEECH_DIR, RedisServer, ServiceProcess, clip_named, free_port
from voicemesh.protocol import INTERNAL_TOKEN_HEADER, OWNER_HEADER
from voicemesh.settings import default_home

pytestmark = pytest.mark.integration

KEY_A, KEY_B = "clone-key-alpha-0001", "clone-key-bravo-0002"
REFERENCE = "pocketsphinx-librivox-0870.wav"
TOKEN = secrets.token_urlsafe(32)


@dataclass
class CloneMesh:
    gateway: ServiceProcess
    clone: ServiceProcess

    def client(self, key: str | None) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.gateway.url, headers=headers, timeout=120)


@pytest.fixture(scope="module")
def clone_mesh(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CloneMesh]:
    logs = tmp_path_factory.mktemp("clone-mesh-logs")
    env = {
        "VOICEMESH_REDIS_URL": redis_server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("clone-mesh-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_TTS_CLONE_KEY_PREFIX": f"gw{free_port()}",
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.5",
        "VOICEMESH_GATEWAY_API_KEYS": json.dumps([KEY_A, KEY_B]),
        "VOICEMESH_INTERNAL_TOKEN": TOKEN,
    }
    clone = ServiceProcess("tts_clone", free_port(), env, logs)
    gateway = ServiceProcess("gateway", free_port(), env, logs)
    try:
        for service in (clone, gateway):
            service.start()
        for service in (clone, gateway):
            service.wait_healthy()
        deadline = time.monotonic() + 60
        replicas: dict[str, int] = {}
        while not replicas.get("tts_clone"):
            if time.monotonic() > deadline:
                pytest.fail(
                    f"tts_clone never registered with the gateway (replicas: "
                    f"{replicas}):\n{clone.log_tail()}"
                )
            time.sleep(0.2)
            replicas = httpx.get(f"{gateway.url}/health", timeout=5).json().get("replicas", {})
        yield CloneMesh(gateway, clone)
    finally:
        gateway.stop()
        clone.stop()


@pytest.fixture(scope="module")
def voice_of_a(clone_mesh: CloneMesh) -> str:
    with clone_mesh.client(KEY_A) as client:
        response = client.post(
            "/v1/clone/voices",
            files={"audio": (REFERENCE, (SPEECH_DIR / REFERENCE).read_bytes(), "audio/wav")},
            data={
                "name": "grandpa",
                "prompt_text": clip_named(REFERENCE).text,
                "language": "en",
                "consent": "true",
            },
        )
    assert response.status_code == 201, response.text
    return str(response.json()["voice_id"])


def test_a_key_is_required(clone_mesh: CloneMesh) -> None:
    with clone_mesh.client(None) as client:
        assert client.get("/v1/clone/voices").status_code == 401


def test_profiles_are_private_to_their_key(clone_mesh: CloneMesh, voice_of_a: str) -> None:
    with clone_mesh.client(KEY_A) as a, clone_mesh.client(KEY_B) as b:
        assert [v["voice_id"] for v in a.get("/v1/clone/voices").json()["voices"]] == [voice_of_a]
        assert b.get("/v1/clone/voices").json() == {"voices": []}
        assert b.get(f"/v1/clone/voices/{voice_of_a}").status_code == 404
        response = b.post("/v1/clone/synthesize", json={"text": "hi", "voice_id": voice_of_a})
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "voice_not_found"
        assert b.delete(f"/v1/clone/voices/{voice_of_a}").status_code == 404
        assert a.get(f"/v1/clone/voices/{voice_of_a}").status_code == 200


def test_the_clone_service_serves_only_the_gateway(clone_mesh: CloneMesh, voice_of_a: str) -> None:
    # A's fingerprint is in Redis key names; posing as the gateway with it is refused.
    posing = {OWNER_HEADER: f"key-{fingerprint(KEY_A)}"}
    wrong = {**posing, INTERNAL_TOKEN_HEADER: secrets.token_urlsafe(32)}
    with httpx.Client(base_url=clone_mesh.clone.url, timeout=30, trust_env=False) as direct:
        for headers in (posing, wrong):
            for response in (
                direct.get(f"/v1/voices/{voice_of_a}", headers=headers),
                direct.get("/v1/voices", headers=headers),
                direct.post(
                    "/v1/synthesize", json={"text": "hi", "voice_id": voice_of_a}, headers=headers
                ),
                direct.delete(f"/v1/voices/{voice_of_a}", headers=headers),
            ):
                assert response.status_code == 401, response.text
                assert response.json()["error"]["code"] == "internal_token_required"
                assert TOKEN not in response.text
        assert direct.get("/health").status_code == 200
        assert direct.get("/metrics").status_code == 200
    # The token stays out of both services' logs.
    assert TOKEN not in clone_mesh.clone.log_tail(400)
    assert TOKEN not in clone_mesh.gateway.log_tail(400)
    # Through the gateway the profile is still A's alone.
    with clone_mesh.client(KEY_A) as a, clone_mesh.client(KEY_B) as b:
        assert b.get(f"/v1/clone/voices/{voice_of_a}").status_code == 404
        assert a.get(f"/v1/clone/voices/{voice_of_a}").status_code == 200


def test_bad_upload_is_refused_with_the_reason(clone_mesh: CloneMesh) -> None:
    with clone_mesh.client(KEY_A) as client:
        response = client.post(
            "/v1/clone/voices",
            files={"audio": ("x.wav", b"not audio at all" * 64, "audio/wav")},
            data={"name": "broken", "consent": "true", "prompt_text": "x"},
        )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "undecodable_audio"


def test_synthesize_then_hit_the_cache(clone_mesh: CloneMesh, voice_of_a: str) -> None:
    request = {"text": "Please remember your appointment at ten.", "voice_id": voice_of_a}
    with clone_mesh.client(KEY_A) as client:
        first = client.post("/v1/clone/synthesize", json=request)
        second = client.post("/v1/clone/synthesize", json=request)
        status = client.get("/v1/admin/status").json()
    assert first.status_code == 200, first.text
    assert first.headers["x-voicemesh-engine"] == "world_vits"
    assert first.headers["x-voicemesh-approximate"] == "true"
    assert first.headers["x-voicemesh-backend"] == clone_mesh.clone.url
    assert (first.headers["x-voicemesh-cache"], second.headers["x-voicemesh-cache"]) == (
        "miss",
        "hit",
    )
    assert second.content == first.content
    # The replica's registry entry carries its hit rate (refreshed every heartbeat).
    deadline = time.monotonic() + 10
    rate = None
    while time.monotonic() < deadline:
        replicas = status["services"].get("tts_clone", [])
        rate = replicas[0]["load"].get("cache_hit_rate") if replicas else None
        if rate:
            break
        time.sleep(0.5)
        with clone_mesh.client(KEY_A) as client:
            status = client.get("/v1/admin/status").json()
    assert rate is not None and 0 < rate <= 1


def test_openai_speech_with_a_profile_id(clone_mesh: CloneMesh, voice_of_a: str) -> None:
    from openai import NotFoundError, OpenAI

    client = OpenAI(base_url=f"{clone_mesh.gateway.url}/v1", api_key=KEY_A)
    speech = client.audio.speech.create(
        model="tts-1",
        voice=voice_of_a,  # type: ignore[arg-type]
        input="Good night, sleep well.",
        response_format="wav",
    )
    audio, rate = soundfile.read(io.BytesIO(speech.read()))
    assert rate == 22050
    assert 0.8 < audio.size / rate < 5.0
    other = OpenAI(base_url=f"{clone_mesh.gateway.url}/v1", api_key=KEY_B)
    with pytest.raises(NotFoundError):
        other.audio.speech.create(
            model="tts-1",
            voice=voice_of_a,  # type: ignore[arg-type]
            input="Good night.",
            response_format="wav",
        )
