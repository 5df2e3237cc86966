"""``tts_clone`` in-process with real Redis and the real CPU engine (VITS + WORLD).

Profiles: validation of uploads, ownership by key identity. Synthesis: the CPU
engine, the result cache, and the fallback when a registered GPT-SoVITS backend is
down.
"""

from __future__ import annotations

import contextlib
import io
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import soundfile
from fastapi.testclient import TestClient

from tests.harness import SPEECH_DIR, RedisServer, clip_named, free_port
from voicemesh.audio_files import read_audio_file
from voicemesh.clone.engines import WorldAdaptedVits
from voicemesh.clone.service import create_clone_app
from voicemesh.clone.settings import CloneSettings
from voicemesh.protocol import OWNER_HEADER

pytestmark = pytest.mark.service

REFERENCE = "pocketsphinx-librivox-0870.wav"
ALICE = {OWNER_HEADER: "key-aaaaaaaa"}
BOB = {OWNER_HEADER: "key-bbbbbbbb"}


@pytest.fixture(scope="session")
def cpu_engine() -> WorldAdaptedVits:
    """The real CPU cloning engine on the bundled Piper voice (loaded once)."""
    from voicemesh.clone.vits import load_base_voice

    engine = WorldAdaptedVits(load_base_voice("en_US-joe-medium"), "en_US-joe-medium")
    assert engine.source.f0_hz > 0
    return engine


def make_settings(redis: RedisServer, home: Path, **overrides: object) -> CloneSettings:
    values: dict[str, object] = {
        "port": free_port(),
        "redis_url": redis.url,
        "key_prefix": f"t{free_port()}",
        "voices_dir": home / "voices",
        "cache_dir": home / "cache",
        "backend_refresh_s": 0.2,
        "heartbeat_interval_s": 0.5,
        **overrides,
    }
    return CloneSettings(**values)  # type: ignore[arg-type]


@pytest.fixture
def client(
    redis_server: RedisServer, tmp_path: Path, cpu_engine: WorldAdaptedVits
) -> Iterator[TestClient]:
    with TestClient(
        create_clone_app(make_settings(redis_server, tmp_path), cpu_engine=cpu_engine),
        headers=ALICE,
    ) as test_client:
        yield test_client


def wav_of(samples: np.ndarray, rate: int = 16000) -> bytes:
    buffer = io.BytesIO()
    soundfile.write(buffer, samples, rate, format="WAV", subtype="PCM_16")
    return buffer.getvalue()


def upload(
    client: TestClient, data: bytes, headers: dict[str, str] | None = None, **fields: str
) -> tuple[int, dict[str, object]]:
    form = {
        "name": "me",
        "language": "en",
        "consent": "true",
        "prompt_text": clip_named(REFERENCE).text,
        **fields,
    }
    response = client.post(
        "/v1/voices", files={"audio": ("ref.wav", data, "audio/wav")}, data=form, headers=headers
    )
    body: dict[str, object] = response.json()
    return response.status_code, body


def reference_bytes(name: str = REFERENCE) -> bytes:
    return (SPEECH_DIR / name).read_bytes()


def error_code(body: dict[str, object]) -> str:
    error = body["error"]
    assert isinstance(error, dict)
    assert error["message"]
    return str(error["code"])


# ---------------------------------------------------------------- profiles


def test_upload_stores_audio_by_hash_and_metadata(client: TestClient, tmp_path: Path) -> None:
    status, body = upload(client, reference_bytes())
    assert status == 201, body
    assert str(body["voice_id"]).startswith("v_")
    assert "owner" not in body
    digest = str(body["audio_sha256"])
    stored = tmp_path / "voices" / f"{digest}.wav"
    assert stored.is_file()
    import hashlib

    assert hashlib.sha256(stored.read_bytes()).hexdigest() == digest
    audio, rate = read_audio_file(stored)
    assert rate == 32000
    assert 3.0 <= audio.size / rate <= 10.0
    quality = body["quality"]
    assert isinstance(quality, dict) and quality["snr_db"] > 12  # type: ignore[operator]
    assert client.get(f"/v1/voices/{body['voice_id']}", headers=ALICE).json() == body


def test_too_short_is_422(client: TestClient) -> None:
    status, body = upload(client, reference_bytes("pocketsphinx-goforward.wav"))
    assert status == 422
    assert error_code(body) == "reference_too_short"


def test_too_long_keeps_ten_seconds_and_says_so(client: TestClient) -> None:
    a, rate = read_audio_file(SPEECH_DIR / REFERENCE)
    b, _ = read_audio_file(SPEECH_DIR / "pocketsphinx-librivox-0890.wav")
    status, body = upload(client, wav_of(np.concatenate([a, b]), rate))
    assert status == 201, body
    assert body["duration_s"] == pytest.approx(10.0, abs=0.05)
    quality = body["quality"]
    assert isinstance(quality, dict)
    assert "best 10 s window" in quality["warnings"][0]


def test_silent_is_422(client: TestClient) -> None:
    status, body = upload(client, wav_of(np.zeros(16000 * 5, dtype=np.float32)))
    assert status == 422
    assert error_code(body) == "silent_reference"


def test_clipped_is_422(client: TestClient) -> None:
    audio, rate = read_audio_file(SPEECH_DIR / REFERENCE)
    loud = np.clip(audio * 20.0, -1.0, 1.0)
    status, body = upload(client, wav_of(loud, rate))
    assert status == 422
    assert error_code(body) == "reference_clipped"


def test_corrupt_file_is_400_and_the_service_stays_up(client: TestClient) -> None:
    status, body = upload(client, b"RIFF\x00\x00garbage" + bytes(range(256)) * 40)
    assert status == 400
    assert error_code(body) == "undecodable_audio"
    assert client.get("/health").status_code == 200
    assert upload(client, reference_bytes())[0] == 201


def test_consent_is_required(client: TestClient) -> None:
    status, body = upload(client, reference_bytes(), consent="false")
    assert status == 400
    assert error_code(body) == "consent_required"


def test_another_key_gets_404_everywhere(client: TestClient) -> None:
    status, body = upload(client, reference_bytes())
    assert status == 201
    voice = body["voice_id"]
    assert client.get(f"/v1/voices/{voice}", headers=BOB).status_code == 404
    assert client.get("/v1/voices", headers=BOB).json() == {"voices": []}
    response = client.post("/v1/synthesize", json={"text": "hi", "voice_id": voice}, headers=BOB)
    assert response.status_code == 404
    assert error_code(response.json()) == "voice_not_found"
    assert client.delete(f"/v1/voices/{voice}", headers=BOB).status_code == 404
    # Still there for its owner.
    listed = client.get("/v1/voices", headers=ALICE).json()["voices"]
    assert [v["voice_id"] for v in listed] == [voice]


def test_delete_removes_the_file_with_the_last_profile(client: TestClient, tmp_path: Path) -> None:
    first = upload(client, reference_bytes())[1]
    second = upload(client, reference_bytes())[1]
    assert first["audio_sha256"] == second["audio_sha256"]
    path = tmp_path / "voices" / f"{first['audio_sha256']}.wav"
    assert client.delete(f"/v1/voices/{first['voice_id']}", headers=ALICE).status_code == 200
    assert path.is_file()  # the second profile still uses it
    assert client.delete(f"/v1/voices/{second['voice_id']}", headers=ALICE).status_code == 200
    assert not path.exists()
    assert client.get(f"/v1/voices/{first['voice_id']}", headers=ALICE).status_code == 404


# ---------------------------------------------------------------- synthesis and cache


def test_cpu_engine_synthesis_is_labelled_approximate(client: TestClient) -> None:
    voice = upload(client, reference_bytes())[1]["voice_id"]
    response = client.post(
        "/v1/synthesize",
        json={"text": "Take one tablet with water after breakfast.", "voice_id": voice},
    )
    assert response.status_code == 200, response.text
    assert response.headers["x-voicemesh-engine"] == "world_vits"
    assert response.headers["x-voicemesh-approximate"] == "true"
    assert response.headers["x-voicemesh-cache"] == "miss"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 22050
    assert 1.5 < audio.size / rate < 6.0


def test_cache_miss_then_hit_with_the_same_bytes(client: TestClient) -> None:
    voice = upload(client, reference_bytes())[1]["voice_id"]
    request = {"text": "Good morning, it is time for your medicine.", "voice_id": voice}
    started = time.perf_counter()
    first = client.post("/v1/synthesize", json=request)
    miss_s = time.perf_counter() - started
    assert first.headers["x-voicemesh-cache"] == "miss"
    started = time.perf_counter()
    second = client.post("/v1/synthesize", json=request)
    hit_s = time.perf_counter() - started
    assert second.headers["x-voicemesh-cache"] == "hit"
    assert second.headers["x-voicemesh-engine"] == "world_vits"
    assert second.headers["x-voicemesh-approximate"] == "true"
    # A hit names its sample rate as the miss did (a PCM client needs it to play the audio).
    assert second.headers["x-voicemesh-sample-rate"] == first.headers["x-voicemesh-sample-rate"]
    assert second.content == first.content
    # Served without synthesizing: a fraction of the miss, whatever the machine's load
    # (the benchmark measures the hit's p50).
    assert hit_s < miss_s / 2, (hit_s, miss_s)
    other = client.post("/v1/synthesize", json={**request, "speed": 1.2})
    assert other.headers["x-voicemesh-cache"] == "miss"
    health = client.get("/health").json()
    assert health["cache"]["hits"] == 1
    assert health["cache"]["misses"] == 2
    metrics = client.get("/metrics").text
    hits = 'voicemesh_requests_total{outcome="hit",route="cache",service="tts_clone"} 1.0'
    assert hits in metrics
    assert "voicemesh_clone_cache_hit_ratio" in metrics


def test_mp3_at_24k_for_the_openai_route(client: TestClient) -> None:
    voice = upload(client, reference_bytes())[1]["voice_id"]
    response = client.post(
        "/v1/synthesize",
        json={
            "text": "Time for your evening walk.",
            "voice_id": voice,
            "format": "mp3",
            "sample_rate": 24000,
            "stream": True,
        },
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    audio, rate = soundfile.read(io.BytesIO(response.content))
    assert rate == 24000
    assert 1.0 < audio.size / rate < 5.0


def test_streaming_passes_pcm_through(client: TestClient) -> None:
    voice = upload(client, reference_bytes())[1]["voice_id"]
    with client.stream(
        "POST",
        "/v1/synthesize",
        json={
            "text": "One more sentence to stream.",
            "voice_id": voice,
            "format": "pcm",
            "stream": True,
        },
    ) as response:
        assert response.status_code == 200
        assert response.headers["x-voicemesh-sample-rate"] == "22050"
        data = b"".join(response.iter_bytes())
    assert len(data) % 2 == 0
    assert 1.0 < len(data) / 2 / 22050 < 5.0


def test_bad_requests_are_clear(client: TestClient) -> None:
    voice = upload(client, reference_bytes())[1]["voice_id"]
    response = client.post("/v1/synthesize", json={"text": "", "voice_id": voice})
    assert response.status_code == 422
    response = client.post("/v1/synthesize", json={"text": "x", "voice_id": voice, "format": "aac"})
    assert response.status_code == 422
    assert error_code(response.json()) == "validation_error"
    response = client.post("/v1/synthesize", json={"text": "x", "voice_id": voice, "speed": 9})
    assert response.status_code == 422
    response = client.post(
        "/v1/synthesize", json={"text": "你好", "voice_id": voice, "language": "zh"}
    )
    assert response.status_code == 400
    assert error_code(response.json()) == "unsupported_language"
    response = client.post("/v1/synthesize", json={"text": "word " * 201, "voice_id": voice})
    assert response.status_code == 413  # as tts_vits answers (docs/errors.md)
    assert error_code(response.json()) == "text_too_long"
    assert client.get("/health").status_code == 200


def test_fallback_when_the_registered_backend_is_down(
    redis_server: RedisServer, tmp_path: Path, cpu_engine: WorldAdaptedVits
) -> None:
    """A GPT-SoVITS backend registered, then died (its registration has not expired yet)."""
    import asyncio

    from voicemesh.registry import RegistryClient, ReplicaInfo

    settings = make_settings(redis_server, tmp_path, registry_ttl_s=30.0)
    dead = f"http://127.0.0.1:{free_port()}"

    instance = f"gsv-dead-{free_port()}"

    async def register(on: bool) -> None:
        registry = RegistryClient(redis_server.url, ttl_s=30)
        now = time.time()
        if on:
            await registry.register(
                ReplicaInfo(
                    instance_id=instance,
                    kind="gpt_sovits",
                    url=dead,
                    started_at=now,
                    updated_at=now,
                )
            )
        else:
            await registry.deregister("gpt_sovits", instance)
        await registry.close()

    asyncio.run(register(True))
    try:
        with TestClient(create_clone_app(settings, cpu_engine=cpu_engine), headers=ALICE) as client:
            assert client.get("/health").json()["gpt_sovits_backends"] == [dead]
            voice = upload(client, reference_bytes())[1]["voice_id"]
            response = client.post(
                "/v1/synthesize", json={"text": "Hello there.", "voice_id": voice}
            )
            assert response.status_code == 200, response.text
            assert response.headers["x-voicemesh-engine"] == "world_vits"
            assert response.headers["x-voicemesh-fallback"] == "backend_closed"
            assert response.headers["x-voicemesh-approximate"] == "true"
            assert client.get("/health").json()["fallbacks"] == 1
            assert 'route="fallback"' in client.get("/metrics").text
    finally:
        asyncio.run(register(False))


class FakeDyingGptSovits:
    """A fake GPT-SoVITS api_v2 (no weights here) that dies in the middle of its reply.

    ``GET /tts`` answers the real server's 400 parameter error, so the service's probe
    registers it; ``POST /tts`` starts a chunked 32 kHz WAV reply, sends its header and
    ``audio_bytes`` of samples, then drops the connection.
    """

    def __init__(self, audio_bytes: int) -> None:
        import socket
        import threading

        self.audio_bytes = audio_bytes
        self.posts = 0
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        import threading

        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: object) -> None:
        import socket
        import struct

        assert isinstance(conn, socket.socket)
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                piece = conn.recv(65536)
                if not piece:
                    return
                data += piece
            head, _, body = data.partition(b"\r\n\r\n")
            length = next(
                (
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                ),
                0,
            )
            while len(body) < length:
                body += conn.recv(65536)
            if head.startswith(b"GET"):
                message = b'{"message": "text is required"}'
                conn.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(message), message)
                )
                return
            self.posts += 1
            header = (
                b"RIFF"
                + struct.pack("<I", 0xFFFFFFFF)
                + b"WAVEfmt "
                + struct.pack("<IHHIIHH", 16, 1, 1, 32000, 64000, 2, 16)
                + b"data"
                + struct.pack("<I", 0xFFFFFFFF)
            )
            payload = header + bytes(self.audio_bytes)
            conn.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: audio/wav\r\n"
                b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n" % (len(payload), payload)
            )
            # No terminating chunk: the backend died mid-reply.

    def close(self) -> None:
        import socket

        with contextlib.suppress(OSError):  # wakes the thread blocked in accept()
            self.server.shutdown(socket.SHUT_RDWR)
        self.server.close()


@pytest.mark.parametrize(
    ("audio_bytes", "stream"),
    [(0, True), (0, False), (6400, False)],
    ids=["header-then-dead-stream", "header-then-dead", "some-audio-then-dead"],
)
def test_backend_dying_mid_reply_falls_back_to_the_cpu_engine(
    redis_server: RedisServer,
    tmp_path: Path,
    cpu_engine: WorldAdaptedVits,
    audio_bytes: int,
    stream: bool,
) -> None:
    fake = FakeDyingGptSovits(audio_bytes)
    # Its own registry kind: the fake must not outlive this test in other tests' view.
    settings = make_settings(
        redis_server,
        tmp_path,
        gptsovits_urls=[fake.url],
        gptsovits_kind=f"gpt_sovits_fake{free_port()}",
    )
    try:
        with TestClient(create_clone_app(settings, cpu_engine=cpu_engine), headers=ALICE) as client:
            deadline = time.monotonic() + 10
            while client.get("/health").json()["gpt_sovits_backends"] != [fake.url]:
                assert time.monotonic() < deadline, "the fake backend was never registered"
                time.sleep(0.1)
            voice = upload(client, reference_bytes())[1]["voice_id"]
            response = client.post(
                "/v1/synthesize",
                json={
                    "text": "Time for your tablets.",
                    "voice_id": voice,
                    "format": "pcm",
                    "stream": stream,
                },
            )
            assert response.status_code == 200, response.text
            assert fake.posts == 1
            assert response.headers["x-voicemesh-engine"] == "world_vits"
            assert response.headers["x-voicemesh-fallback"] == "backend_closed"
            assert response.headers["x-voicemesh-sample-rate"] == "22050"
            assert 0.8 < len(response.content) / 2 / 22050 < 4.0
    finally:
        fake.close()


def test_without_the_fallback_a_dead_backend_is_503(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    settings = make_settings(
        redis_server, tmp_path, cpu_engine=False, gptsovits_urls=[f"http://127.0.0.1:{free_port()}"]
    )
    with TestClient(create_clone_app(settings), headers=ALICE) as client:
        voice = upload(client, reference_bytes())[1]["voice_id"]
        response = client.post("/v1/synthesize", json={"text": "Hello.", "voice_id": voice})
        assert response.status_code == 503
        assert error_code(response.json()) == "no_engine"
        assert client.get("/health").json()["status"] == "degraded"


def test_cache_evicts_least_recently_used_past_its_bound(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    import asyncio

    from redis.asyncio import Redis

    from voicemesh.clone.cache import ResultCache

    async def scenario() -> None:
        redis = Redis.from_url(redis_server.url, decode_responses=True)
        cache = ResultCache(redis, tmp_path / "cache", max_bytes=250, prefix=f"e{free_port()}")
        for key in ("a", "b"):
            await cache.put(key, bytes(100), media_type="audio/wav", engine="e", approximate=True)
            await asyncio.sleep(0.01)
        assert await cache.get("a") is not None  # "a" is now the most recently used
        await cache.put("c", bytes(100), media_type="audio/wav", engine="e", approximate=True)
        assert await cache.get("b") is None
        assert not (tmp_path / "cache" / "b").exists()
        hit = await cache.get("a")
        assert hit is not None and hit.approximate and hit.data == bytes(100)
        assert await cache.get("c") is not None
        assert await cache.size_bytes() == 200
        assert cache.hit_rate == pytest.approx(3 / 4)
        await redis.aclose()

    asyncio.run(scenario())


async def test_the_cpu_engine_streams_a_long_sentence_piece_by_piece(
    cpu_engine: WorldAdaptedVits,
) -> None:
    from voicemesh.clone.engines import CloneRequest

    request = CloneRequest(
        text="Please remind me to take my medicine at eight o'clock tonight. Thank you.",
        language="en",
        speed=1.0,
        reference_path=clip_named(REFERENCE, SPEECH_DIR).path,
        reference_sha256="streams-piece-by-piece",
        prompt_text="",
        prompt_language="en",
    )
    streamed = [chunk async for chunk in (await cpu_engine.start(request, True)).chunks()]
    whole = b"".join([c async for c in (await cpu_engine.start(request, False)).chunks()])
    total = sum(map(len, streamed))
    # "Please remind me", the rest of the sentence, "Thank you.": adapted one by one, the
    # short first piece sent on its own, the same speech as the whole.
    assert len(streamed) == 3, [len(c) for c in streamed]
    assert len(streamed[0]) < 0.4 * total
    assert abs(total - len(whole)) / len(whole) < 0.15, (total, len(whole))
