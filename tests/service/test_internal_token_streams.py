"""Calls between services carry the internal token (issue 15): the gateway's WebSockets,
and ``tts_clone`` asking STT for a reference's transcript.

The real ``stt_cpu_ws`` (Whisper tiny.en, to load fast) and the real speech detector
(``stt_tiny_ws``) on loopback, both requiring the token; the gateway in-process. With
the mesh's token a session gets a transcript and the detector's VAD events (so both
sockets were let in); with another mesh's token the engine refuses it and the client
is told ``no_backend``. The real ``tts_clone`` with the mesh's token gets a reference
transcribed by that STT; with another mesh's token it cannot.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr
from starlette.websockets import WebSocketDisconnect

from gateway.app import create_app as create_gateway
from gateway.settings import GatewaySettings
from stt_cpu_ws.app import SttCpuSettings
from stt_cpu_ws.app import create_app as create_stt
from stt_tiny_ws.app import SttTinySettings
from stt_tiny_ws.app import create_app as create_detector
from tests import harness
from tests.harness import RedisServer, ThreadedServer, assert_error, clip_named, free_port
from tests.service.test_clone_service import REFERENCE, make_settings, reference_bytes
from voicemesh.audio_files import load_clip_16k
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.service import create_clone_app
from voicemesh.protocol import CLOSE_TRY_AGAIN, INTERNAL_TOKEN_HEADER, OWNER_HEADER, SAMPLE_RATE

pytestmark = [pytest.mark.service, pytest.mark.timeout(300)]

TOKEN = "internal-token-of-this-test-mesh-0123456789"
WRONG = "internal-token-of-another-mesh-9876543210"
CLIP = clip_named("whisper-jfk.wav")
CLONE_TEST_DB = 11
"""A database of its own on the shared test Redis (test_internal_token uses 10)."""


@pytest.fixture(scope="module")
def engines() -> Iterator[tuple[ThreadedServer, ThreadedServer]]:
    """STT and detector on loopback, both answering only callers with ``TOKEN``."""
    token = SecretStr(TOKEN)
    stt_port, detector_port = free_port(), free_port()
    stt = create_stt(
        SttCpuSettings(
            redis_url="", port=stt_port, model="tiny.en", cpu_threads=1, internal_token=token
        )
    )
    detector = create_detector(
        SttTinySettings(redis_url="", port=detector_port, confirm=False, internal_token=token)
    )
    with (
        ThreadedServer(stt, stt_port) as stt_server,
        ThreadedServer(detector, detector_port) as det,
    ):
        yield stt_server, det


def gateway_settings(engines: tuple[ThreadedServer, ThreadedServer], token: str) -> GatewaySettings:
    stt, detector = engines
    return GatewaySettings(
        redis_url="",
        backend_urls=[stt.url],
        detector_urls=[detector.url],
        detector_max_utilization=1.0,
        probe_interval_s=0,
        wyoming_enabled=False,
        internal_token=SecretStr(token),
    )


def pcm16(audio: np.ndarray) -> bytes:
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def test_a_session_reaches_the_stt_engine_and_the_detector_with_the_token(
    engines: tuple[ThreadedServer, ThreadedServer],
) -> None:
    audio = load_clip_16k(CLIP.path)
    audio = np.concatenate([audio, np.zeros(SAMPLE_RATE, dtype=np.float32)])
    frame = SAMPLE_RATE // 10
    messages: list[dict[str, Any]] = []
    with (
        TestClient(create_gateway(gateway_settings(engines, TOKEN))) as gateway,
        gateway.websocket_connect("/ws/transcribe") as ws,
    ):
        ready = ws.receive_json()
        assert ready["type"] == "ready", ready
        ws.send_json({"type": "start", "sample_rate": SAMPLE_RATE, "encoding": "pcm_s16le"})
        for start in range(0, audio.size, frame):
            ws.send_bytes(pcm16(audio[start : start + frame]))
        ws.send_json({"type": "stop"})
        with pytest.raises(WebSocketDisconnect):
            while True:
                messages.append(ws.receive_json())
    errors = [m for m in messages if m["type"] == "error"]
    assert not errors, errors
    text = " ".join(m["text"] for m in messages if m["type"] == "final")
    assert harness.error_rate(CLIP.text, text) <= 30, text
    # The detector's events reach the client: its socket was let in too.
    assert any(m["type"] == "vad" and m.get("source") == "detector" for m in messages), messages


def test_a_gateway_with_another_meshs_token_gets_no_backend(
    engines: tuple[ThreadedServer, ThreadedServer],
) -> None:
    with (
        TestClient(create_gateway(gateway_settings(engines, WRONG))) as gateway,
        gateway.websocket_connect("/ws/transcribe") as ws,
    ):
        refusal = ws.receive_json()
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
    assert refusal["type"] == "error" and refusal["code"] == "no_backend", refusal
    assert "internal token" in refusal["message"]
    assert TOKEN not in refusal["message"] and WRONG not in refusal["message"]
    assert closed.value.code == CLOSE_TRY_AGAIN


@pytest.mark.parametrize(("token", "transcribed"), [(TOKEN, True), (WRONG, False)])
def test_tts_clone_has_a_reference_transcribed_by_stt_with_the_token(
    token: str,
    transcribed: bool,
    engines: tuple[ThreadedServer, ThreadedServer],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    from voicemesh.clone.vits import load_base_voice

    stt, _ = engines
    cpu = WorldAdaptedVits(load_base_voice("en_US-joe-medium"), "en_US-joe-medium")
    with harness.empty_redis_db(redis_server, CLONE_TEST_DB) as url:
        settings = make_settings(
            redis_server,
            tmp_path,
            redis_url=url,
            stt_kinds=[],
            stt_urls=[stt.url],
            internal_token=SecretStr(token),
        )
        with TestClient(
            create_clone_app(settings, cpu_engine=cpu),
            headers={INTERNAL_TOKEN_HEADER: token, OWNER_HEADER: "key-aaaaaaaa"},
        ) as clone:
            # No prompt_text: tts_clone asks STT what the reference says.
            response = clone.post(
                "/v1/voices",
                files={"audio": ("ref.wav", reference_bytes(), "audio/wav")},
                data={"name": "me", "language": "en", "consent": "true"},
            )
    if transcribed:
        assert response.status_code == 201, response.text
        profile = response.json()
        assert profile["prompt_source"] == "transcribed"
        heard = set(harness.normalize(profile["prompt_text"]))
        said = set(harness.normalize(clip_named(REFERENCE).text))
        assert len(heard & said) >= len(heard) // 2, (heard, said)
    else:
        message = assert_error(response, 503, "transcription_failed")
        assert "401" in message
        assert TOKEN not in response.text and WRONG not in response.text
