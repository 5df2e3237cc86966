"""The CPU mesh as `docker-compose up` runs it, checked from outside through nginx's port
on 127.0.0.1 only: health and readiness, a streamed clip's transcript, the OpenAI SDK,
a voice profile across a tts_clone restart, a Redis restart under a live session, two
stt_cpu_ws replicas registered by their container addresses and a `docker kill` failover,
and `down -v` leaving nothing behind. The tests run in this order on one stack."""

from __future__ import annotations

import asyncio
import io
import subprocess
import threading
import time
from typing import Any

import openai
import pytest
import soundfile
import websockets

from client.streaming import StreamResult, stream_audio
from tests.compose.conftest import API_KEY, CPU_MESH, PROJECT, Stack, record
from tests.harness import SPEECH_DIR, clip_named, error_rate, offline_transcript
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.compose, pytest.mark.timeout(1200)]

JFK = clip_named("whisper-jfk.wav")
LJ = clip_named("coqui-tts-LJ001-0001.wav")
REFERENCE = clip_named("pocketsphinx-librivox-0870.wav")
WER_MARGIN = 1.0  # the bound of the streaming tests (tests/integration)


def assert_within_wer(clip: Any, transcript: str) -> None:
    """Streaming error rate no more than WER_MARGIN points above offline Whisper base."""
    streamed = error_rate(clip.text, transcript)
    offline = error_rate(clip.text, offline_transcript(clip))
    assert streamed <= offline + WER_MARGIN, (transcript, streamed, offline)


async def stream(stack: Stack, clip: Any, **kwargs: Any) -> StreamResult:
    """Stream a clip through nginx; a closed socket fails with what came and the logs."""
    seen: list[dict[str, Any]] = []
    outer = kwargs.pop("on_message", None)

    def on_message(t: float, message: dict[str, Any]) -> None:
        seen.append(message)
        if outer is not None:
            outer(t, message)

    audio = kwargs.pop("audio", None)
    try:
        return await stream_audio(
            stack.ws_url,
            load_clip_16k(clip.path) if audio is None else audio,
            language="en",
            on_message=on_message,
            **kwargs,
        )
    except websockets.ConnectionClosed as exc:
        logs = stack.compose("logs", "--tail", "15", "gateway", "stt_cpu_ws", check=False).stdout
        raise AssertionError(f"stream closed: {exc}; messages {seen}\n{logs}") from exc


def test_every_container_is_healthy_and_ready(stack: Stack) -> None:
    containers = stack.containers()
    services = {c["Config"]["Labels"]["com.docker.compose.service"] for c in containers}
    assert services == CPU_MESH, services
    assert set(stack.health().values()) == {"healthy"}, stack.health()
    # Only nginx (HTTP) and the gateway (Wyoming's TCP port) publish, only on loopback.
    for container in containers:
        published = [
            b
            for bindings in (container["NetworkSettings"]["Ports"] or {}).values()
            for b in bindings or []
        ]
        service = container["Config"]["Labels"]["com.docker.compose.service"]
        if service == "nginx":
            assert [(b["HostIp"], b["HostPort"]) for b in published] == [
                ("127.0.0.1", str(stack.port))
            ]
        elif service == "gateway":
            assert [(b["HostIp"], b["HostPort"]) for b in published] == [
                ("127.0.0.1", stack.env["WYOMING_PORT"])
            ]
        else:
            assert published == [], service
    # Non-root everywhere (redis and nginx by name, the Python services by uid).
    users = {
        c["Config"]["Labels"]["com.docker.compose.service"]: c["Config"]["User"] for c in containers
    }
    assert all(user not in ("", "root", "0") for user in users.values()), users
    with stack.http() as client:
        ready = client.get("/ready")
    assert ready.status_code == 200, ready.text
    body = ready.json()
    assert body["status"] == "ready" and body["redis"] == "connected", body
    assert body["stt_route"], body


def test_a_clip_streams_through_nginx_within_the_wer_bound(stack: Stack) -> None:
    result = asyncio.run(stream(stack, JFK))
    assert result.of_type("error") == [], result.messages
    assert_within_wer(JFK, result.transcript)
    ready = result.of_type("ready")[0]
    # The backend is a container address on the back network, as it registered itself.
    cpu_ips = {stack.ip_of(c) for c in stack.containers("stt_cpu_ws")}
    assert ready["backend"] in {f"http://{ip}:8092" for ip in cpu_ips}, ready


def test_the_openai_sdk_transcribes_and_speaks_through_nginx(stack: Stack) -> None:
    with openai.OpenAI(
        base_url=f"{stack.url}/v1", api_key=API_KEY, max_retries=0, timeout=120
    ) as client:
        with open(JFK.path, "rb") as audio:
            text = client.audio.transcriptions.create(model="whisper-1", file=audio).text
        spoken = client.audio.speech.create(
            model="tts-1",
            voice="alloy",
            input="The mesh runs in containers now.",
            response_format="wav",
        ).read()
    assert error_rate(JFK.text, text) <= error_rate(JFK.text, offline_transcript(JFK)) + 5
    # The gateway streams WAV with an open length; soundfile needs the real one.
    audio, rate = soundfile.read(io.BytesIO(_fix_stream_wav(spoken)))
    assert rate == 22050 and 1.0 < len(audio) / rate < 6.0


def _fix_stream_wav(wav: bytes) -> bytes:
    """Patch a streamed WAV's RIFF and data sizes to the bytes that came."""
    data = bytearray(wav)
    if data[:4] == b"RIFF":
        data[4:8] = (len(data) - 8).to_bytes(4, "little")
        index = data.find(b"data")
        if index >= 0:
            data[index + 4 : index + 8] = (len(data) - index - 8).to_bytes(4, "little")
    return bytes(data)


def test_a_voice_profile_survives_a_tts_clone_restart(stack: Stack) -> None:
    with stack.http() as client:
        made = client.post(
            "/v1/clone/voices",
            files={
                "audio": (REFERENCE.file, (SPEECH_DIR / REFERENCE.file).read_bytes(), "audio/wav")
            },
            data={
                "name": "compose-tier",
                "prompt_text": REFERENCE.text,
                "language": "en",
                "consent": "true",
            },
        )
        assert made.status_code == 201, made.text
        voice_id = made.json()["voice_id"]
        first = client.post(
            "/v1/clone/synthesize", json={"text": "Before the restart.", "voice_id": voice_id}
        )
        assert first.status_code == 200, first.text
        assert first.headers["x-voicemesh-engine"] == "world_vits"
    stack.compose("restart", "tts_clone")
    stack.wait_healthy({"tts_clone"}, timeout_s=180)
    stack.wait_for_replicas("tts_clone", 1)
    with stack.http() as client:
        assert client.get(f"/v1/clone/voices/{voice_id}").status_code == 200
        after = client.post(
            "/v1/clone/synthesize", json={"text": "After the restart.", "voice_id": voice_id}
        )
    assert after.status_code == 200, after.text
    assert after.headers["x-voicemesh-cache"] == "miss"
    audio, _ = soundfile.read(io.BytesIO(_fix_stream_wav(after.content)))
    assert len(audio) > 0


def test_a_redis_restart_under_a_live_session(stack: Stack) -> None:
    changed = stack.admin("POST", "/v1/admin/mode", json={"mode": "cpu"})
    assert changed.status_code == 200 and changed.json()["scope"] == "shared", changed.text
    time.sleep(1.5)  # appendfsync everysec: the change is on the volume's file

    async def restart_redis() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(stack.compose, "restart", "redis")

    async def session() -> StreamResult:
        result, _ = await asyncio.gather(stream(stack, LJ), restart_redis())
        return result

    result = asyncio.run(session())
    assert result.of_type("error") == [], result.messages
    assert_within_wer(LJ, result.transcript)
    stack.wait_healthy({"redis"}, timeout_s=60)
    # The mode is Redis's, read back from its append-only file after the restart.
    stored = stack.compose("exec", "-T", "redis", "redis-cli", "get", "voicemesh:mode")
    assert stored.stdout.strip() == "cpu", stored.stdout
    # Every replica registers again on its next heartbeat.
    for service in ("stt_cpu_ws", "stt_tiny_ws", "tts_vits", "tts_clone"):
        stack.wait_for_replicas(service, 1)
    mode = stack.admin("GET", "/v1/admin/mode").json()
    assert mode["mode"] == "cpu" and mode["redis"] == "connected", mode


def test_two_replicas_share_new_sessions_and_a_killed_one_fails_over(stack: Stack) -> None:
    stack.compose("up", "-d", "--no-build", "--no-recreate", "--scale", "stt_cpu_ws=2")
    stack.wait_healthy(CPU_MESH, timeout_s=300, replicas={"stt_cpu_ws": 2})
    registered = stack.wait_for_replicas("stt_cpu_ws", 2)
    containers = {stack.ip_of(c): c for c in stack.containers("stt_cpu_ws")}
    urls = {f"http://{ip}:8092" for ip in containers}
    assert {r["url"].rstrip("/") for r in registered} == urls, registered

    async def two_sessions() -> list[StreamResult]:
        audio = load_clip_16k(JFK.path)[:32000]
        return list(
            await asyncio.gather(
                *[stream(stack, JFK, audio=audio, trailing_silence_s=0.5) for _ in range(2)]
            )
        )

    backends = {r.of_type("ready")[0]["backend"] for r in asyncio.run(two_sessions())}
    assert backends == urls, backends

    killed: dict[str, Any] = {}

    def on_message(t: float, message: dict[str, Any]) -> None:
        if message.get("type") == "ready":
            killed["backend"] = message["backend"]
        if message.get("type") == "partial" and "t" not in killed:
            ip = killed["backend"].removeprefix("http://").rsplit(":", 1)[0]
            killed["t"] = t
            # Off the event loop: docker kill takes a moment.
            threading.Thread(
                target=subprocess.run,
                daemon=True,
                kwargs={
                    "args": ["docker", "kill", containers[ip]["Id"]],
                    "check": True,
                    "capture_output": True,
                },
            ).start()

    result = asyncio.run(stream(stack, LJ, on_message=on_message))
    assert "t" in killed, result.messages
    failovers = result.timed("failover")
    assert len(failovers) == 1, result.messages
    t_failover, failover = failovers[0]
    assert failover["from"] == killed["backend"] and failover["to"] in urls - {killed["backend"]}, (
        failover
    )
    assert result.of_type("error") == [], result.messages
    assert_within_wer(LJ, result.transcript)
    after = [
        t for t, m in result.messages if m.get("type") in ("partial", "final") and t > t_failover
    ]
    record("failover_message_after_kill_s", round(t_failover - killed["t"], 2))
    record("failover_next_transcript_s", round(after[0] - t_failover, 2) if after else None)
    record("failover_replayed_ms", failover.get("replayed_ms"))


def test_home_assistant_transcribes_through_the_published_wyoming_port(stack: Stack) -> None:
    """Wyoming as Home Assistant reaches it: the gateway's port on the host's loopback,
    describe answered, a clip transcribed within the WER bound by the containers."""
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    from tests.wyoming_ha import transcribe

    port = int(stack.env["WYOMING_PORT"])

    async def describe() -> Info:
        async with AsyncTcpClient("127.0.0.1", port) as client:
            await client.write_event(Describe().event())
            event = await asyncio.wait_for(client.read_event(), 30)
        assert event is not None and Info.is_type(event.type), event
        return Info.from_event(event)

    info = asyncio.run(describe())
    assert info.asr and any("base" in m.name for m in info.asr[0].models), info.asr
    clip = clip_named("whisper-jfk.wav")
    result = asyncio.run(transcribe("127.0.0.1", port, load_clip_16k(clip.path), realtime=True))
    assert result.errors == [], result.errors
    assert (
        error_rate(clip.text, result.text) <= error_rate(clip.text, offline_transcript(clip)) + 1.0
    ), result.text


def test_down_leaves_nothing_running(stack: Stack) -> None:
    stack.compose("down", "-v", "--remove-orphans")
    assert stack.containers(all_states=True) == []
    volumes = subprocess.run(
        ["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert volumes == []
    networks = subprocess.run(
        [
            "docker",
            "network",
            "ls",
            "-q",
            "--filter",
            f"label=com.docker.compose.project={PROJECT}",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert networks == []
