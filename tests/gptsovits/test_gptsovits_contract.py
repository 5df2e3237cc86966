"""Contract test: ``tts_clone`` against the real GPT-SoVITS api_v2 server (``gpt-sovits-cpufast``).

The server runs from ``.venv-gptsovits`` (``scripts/setup-gptsovits``) on loopback with
tiny random-weight v2 models built by ``make_tiny_models.py`` with the package's own
model classes: its real loader, text front end, prompt cache and ``POST /tts`` run.
The voice is noise; what is checked is the contract: the request ``tts_clone`` sends
is accepted, and audio comes back at the SoVITS model's rate (32 kHz; the server
answers failures inside synthesis with 16 kHz silence, which this would catch).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.harness import REPO, SPEECH_DIR, RedisServer, clip_named, free_port
from voicemesh.clone.gptsovits import WavStreamReader
from voicemesh.clone.service import create_clone_app
from voicemesh.clone.settings import CloneSettings

pytestmark = pytest.mark.gptsovits

VENV = REPO / ".venv-gptsovits"
SERVER_RATE = 32000
REFERENCE = "pocketsphinx-librivox-0870.wav"


@pytest.fixture(scope="module")
def gptsovits_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real ``gpt-sovits-api-v2`` on loopback, serving tiny random-weight v2 models."""
    python = VENV / "bin" / "python"
    server = VENV / "bin" / "gpt-sovits-api-v2"
    assert server.is_file(), f"{server} is missing: run scripts/setup-gptsovits"
    work = tmp_path_factory.mktemp("gptsovits")
    models = work / "models"
    subprocess.run(
        [str(python), str(Path(__file__).with_name("make_tiny_models.py")), str(models)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    port = free_port()
    log = open(work / "server.log", "wb")  # noqa: SIM115 - owned by the server process
    process = subprocess.Popen(
        [str(server), "-a", "127.0.0.1", "-p", str(port), "-c", str(models / "tts_infer.yaml")],
        env={**os.environ, "GPT_SOVITS_DATA_DIR": str(work / "data")},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            assert process.poll() is None, (work / "server.log").read_text()[-3000:]
            try:
                # Without text the server answers 400 before touching its models.
                if (
                    httpx.get(
                        f"{url}/tts", params={"text_lang": "en", "prompt_lang": "en"}, timeout=2
                    ).status_code
                    == 400
                ):
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        else:
            pytest.fail(
                "gpt-sovits-api-v2 did not start:\n" + (work / "server.log").read_text()[-3000:]
            )
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


@pytest.fixture(scope="module")
def clone_client(
    gptsovits_url: str, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    """``tts_clone`` with only the GPT-SoVITS engine (no CPU fallback to hide a failure)."""
    home = tmp_path_factory.mktemp("clone-home")
    settings = CloneSettings(
        port=free_port(),
        redis_url=redis_server.url,
        key_prefix=f"contract{free_port()}",
        voices_dir=home / "voices",
        cache_dir=home / "cache",
        gptsovits_urls=[gptsovits_url],
        cpu_engine=False,
        fallback=False,
        gptsovits_timeout_s=240,
    )
    with TestClient(create_clone_app(settings)) as client:
        yield client


def upload(client: TestClient) -> dict[str, object]:
    clip = clip_named(REFERENCE)
    response = client.post(
        "/v1/voices",
        files={"audio": (REFERENCE, (SPEECH_DIR / REFERENCE).read_bytes(), "audio/wav")},
        data={"name": "contract", "prompt_text": clip.text, "language": "en", "consent": "true"},
    )
    assert response.status_code == 201, response.text
    body: dict[str, object] = response.json()
    return body


def test_backend_is_registered_and_used(clone_client: TestClient, gptsovits_url: str) -> None:
    health = clone_client.get("/health").json()
    assert health["gpt_sovits_backends"] == [gptsovits_url]
    assert health["engines"] == ["gpt_sovits"]


def test_synthesis_through_gptsovits(clone_client: TestClient) -> None:
    voice = upload(clone_client)
    response = clone_client.post(
        "/v1/synthesize",
        json={"text": "Hello world.", "voice_id": voice["voice_id"], "format": "wav"},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-voicemesh-engine"] == "gpt_sovits"
    assert response.headers["x-voicemesh-approximate"] == "false"
    reader = WavStreamReader()
    pcm = reader.feed(response.content)
    assert reader.sample_rate == SERVER_RATE
    samples = np.frombuffer(pcm, dtype="<i2")
    assert samples.size / SERVER_RATE > 0.1
    assert np.any(samples != 0)


def test_streaming_synthesis_through_gptsovits(clone_client: TestClient) -> None:
    voice = upload(clone_client)
    chunks = []
    with clone_client.stream(
        "POST",
        "/v1/synthesize",
        json={
            "text": "Good morning.",
            "voice_id": voice["voice_id"],
            "format": "wav",
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-voicemesh-engine"] == "gpt_sovits"
        assert response.headers["x-voicemesh-sample-rate"] == str(SERVER_RATE)
        chunks = list(response.iter_bytes())
    reader = WavStreamReader()
    pcm = b"".join(reader.feed(chunk) for chunk in chunks)
    assert reader.sample_rate == SERVER_RATE
    assert len(pcm) / 2 / SERVER_RATE > 0.1
