"""The CPU cloning engine end to end: a real STT replica transcribes references and results.

``stt_cpu_ws`` runs as its own process, registered in a real Redis; ``tts_clone``
finds it through the registry, transcribes a reference uploaded without
``prompt_text``, and every English sentence of the shared manifest, synthesised in
a voice cloned from a shared clip, is transcribed back by the same replica.

The WER is taken over all the manifest's English sentences. The base voice synthesises
without VITS noise (``voicemesh.clone.vits``), so a run's audio is the same every time:
measured 7.3% in process (``benchmarks/tts_roundtrip.py --clone``).
"""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import httpx
import jiwer
import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from tests.harness import (
    SPEECH_DIR,
    RedisServer,
    ServiceProcess,
    error_rate,
    free_port,
    load_manifest,
)
from tests.integration.test_tts import words
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.service import create_clone_app
from voicemesh.clone.settings import CloneSettings
from voicemesh.settings import default_home

pytestmark = pytest.mark.integration

REFERENCES = [
    "pocketsphinx-librivox-0870.wav",
    "whisper-jfk.wav",
    "coqui-tts-LJ001-0001.wav",
    "wenet-librispeech-1995-1837-0001.wav",
]


@pytest.fixture(scope="module")
def stt(
    redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServiceProcess]:
    """A real ``stt_cpu_ws`` process registered in Redis."""
    env = {
        "VOICEMESH_REDIS_URL": redis_server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("stt-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
    }
    service = ServiceProcess("stt_cpu_ws", free_port(), env, tmp_path_factory.mktemp("logs"))
    try:
        service.start().wait_healthy()
        yield service
    finally:
        service.stop()


@pytest.fixture(scope="module")
def clone(
    stt: ServiceProcess, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    from voicemesh.clone.vits import load_base_voice

    home = tmp_path_factory.mktemp("clone-home")
    settings = CloneSettings(
        port=free_port(),
        redis_url=redis_server.url,
        key_prefix=f"rt{free_port()}",
        voices_dir=home / "voices",
        cache_dir=home / "cache",
        cache_max_bytes=0,
    )
    engine = WorldAdaptedVits(load_base_voice("en_US-joe-medium"), "en_US-joe-medium")
    with TestClient(create_clone_app(settings, cpu_engine=engine)) as client:
        yield client


def transcribe(stt: ServiceProcess, wav: bytes) -> str:
    response = httpx.post(
        f"{stt.url}/v1/transcribe",
        files={"file": ("speech.wav", wav, "audio/wav")},
        data={"language": "en"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return str(response.json()["text"])


def test_reference_without_prompt_text_is_transcribed(clone: TestClient) -> None:
    clip = next(c for c in load_manifest() if c.file == REFERENCES[0])
    response = clone.post(
        "/v1/voices",
        files={"audio": (clip.file, clip.path.read_bytes(), "audio/wav")},
        data={"name": "auto", "language": "en", "consent": "true"},
    )
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["prompt_source"] == "transcribed"
    assert error_rate(clip.text, body["prompt_text"]) <= 20.0


def test_cloned_speech_is_intelligible_and_timed_like_plain_vits(
    clone: TestClient, stt: ServiceProcess
) -> None:
    voices = []
    for name in REFERENCES:
        clip = next(c for c in load_manifest() if c.file == name)
        response = clone.post(
            "/v1/voices",
            files={"audio": (name, (SPEECH_DIR / name).read_bytes(), "audio/wav")},
            data={"name": name, "language": "en", "consent": "true", "prompt_text": clip.text},
        )
        assert response.status_code == 201, response.text
        voices.append(response.json()["voice_id"])
    sentences = [c.text for c in load_manifest() if c.language == "en"]
    engine: WorldAdaptedVits = clone.app.state.clone.cpu  # type: ignore[attr-defined]
    references, hypotheses = [], []
    started = time.perf_counter()
    for index, text in enumerate(sentences):
        response = clone.post(
            "/v1/synthesize", json={"text": text, "voice_id": voices[index % len(voices)]}
        )
        assert response.status_code == 200, response.text
        assert response.headers["x-voicemesh-approximate"] == "true"
        audio, rate = soundfile.read(io.BytesIO(response.content), dtype="float32")
        plain = engine.voice.synthesize(text)
        # WORLD keeps the timing: the adapted audio is as long as the plain synthesis
        # (VITS durations vary a little from run to run, hence the tolerance).
        assert abs(audio.size - plain.size) / rate < 0.25 + 0.05 * audio.size / rate
        per_second = len(text.split()) / (audio.size / rate)
        assert 1.0 <= per_second <= 5.0, (text, audio.size / rate)
        assert float(np.sqrt(np.mean(audio**2))) > 0.01
        references.append(text)
        hypotheses.append(transcribe(stt, response.content))
    elapsed = time.perf_counter() - started
    wer = 100 * jiwer.wer([words(r) for r in references], [words(h) for h in hypotheses])
    print(f"\n{len(sentences)} sentences in {elapsed:.1f} s: WER {wer:.1f}%")
    assert wer <= 10.0, list(zip(references, hypotheses, strict=True))
