"""A stream keeps going whatever happens behind the gateway.

Real processes on loopback: a Redis server of this module's own, two CPU STT
replicas, the GPU STT service (run on the CPU here, there being no CUDA: it
registers as ``stt_gpu_ws`` and routing treats it as the GPU replica), a
detector and a gateway. Replicas are SIGKILLed, SIGSTOPped, SIGTERMed; Redis is
stopped; the routing mode is flipped under live sessions.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import redis
from wyoming.asr import TranscriptStart

from client.streaming import StreamResult, stream_audio
from tests.harness import (
    RedisServer,
    ServiceProcess,
    clip_named,
    error_rate,
    free_port,
    offline_transcript,
    stream_errors,
)
from tests.realtime_sdk import RealtimeResult
from tests.realtime_sdk import transcribe as realtime_transcribe
from tests.wyoming_ha import WyomingTranscription
from tests.wyoming_ha import transcribe as wyoming_transcribe
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

JFK = clip_named("whisper-jfk.wav")
LJ = clip_named("coqui-tts-LJ001-0001.wav")
WER_MARGIN = 1.0
STALL_S = 6.0
"""The gateway's stall timeout in this mesh (the default is 3 s)."""


@dataclass
class HaMesh:
    """The services of this module, by role."""

    redis: RedisServer
    cpu: list[ServiceProcess]
    gpu: ServiceProcess
    detector: ServiceProcess
    gateway: ServiceProcess

    @property
    def ws_url(self) -> str:
        """The gateway's streaming endpoint."""
        return f"ws://127.0.0.1:{self.gateway.port}/ws/transcribe"

    def by_url(self, url: str) -> ServiceProcess:
        """The STT process serving ``url``."""
        return next(p for p in [*self.cpu, self.gpu] if p.url == url.rstrip("/"))

    def set_mode(self, mode: str) -> None:
        """Write the routing mode the way the admin API does."""
        redis.Redis.from_url(self.redis.url).set("voicemesh:mode", mode)

    def ensure_running(self) -> None:
        """Restart any STT replica a test killed or stopped, and wait for routes."""
        for process in [*self.cpu, self.gpu, self.detector]:
            if process.process is not None and process.process.poll() is not None:
                process.start()
            process.wait_healthy()
        wait_for_replicas(self.gateway.url, 3)


def wait_for_replicas(gateway_url: str, count: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Wait until the gateway routes to ``count`` STT replicas."""
    deadline = time.monotonic() + timeout_s
    body: dict[str, Any] = {}
    while time.monotonic() < deadline:
        body = httpx.get(f"{gateway_url}/health", timeout=2).json()
        if len(body.get("stt_route") or []) >= count:
            return body
        time.sleep(0.2)
    raise AssertionError(f"gateway did not see {count} replicas: {body}")


def wait_for_mode(gateway_url: str, mode: str, timeout_s: float = 5.0) -> None:
    """Wait until the gateway has read ``mode`` from Redis."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if httpx.get(f"{gateway_url}/health", timeout=2).json().get("mode") == mode:
            return
        time.sleep(0.1)
    raise AssertionError(f"gateway never switched to mode {mode}")


@pytest.fixture(scope="module")
def ha(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HaMesh]:
    """Two CPU replicas, the GPU service on CPU, a detector and a gateway."""
    logs = tmp_path_factory.mktemp("ha-logs")
    server = RedisServer(tmp_path_factory.mktemp("ha-redis"))
    server.start()
    from voicemesh.settings import default_home

    env = {
        "VOICEMESH_REDIS_URL": server.url,
        "VOICEMESH_HOME": str(tmp_path_factory.mktemp("ha-home")),
        "VOICEMESH_MODELS_DIR": str(default_home() / "models"),
        "VOICEMESH_GATEWAY_REGISTRY_REFRESH_S": "0.3",
        "VOICEMESH_STT_CPU_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_STT_GPU_HEARTBEAT_INTERVAL_S": "0.5",
        "VOICEMESH_STT_GPU_DEVICE": "cpu",
        "VOICEMESH_STT_GPU_WORKERS": "1",
        "VOICEMESH_STT_CPU_CPU_THREADS": "2",
        # Four engines share two cores here (five processes with the gateway): a loaded
        # replica can fall a few seconds behind without having stalled.
        "VOICEMESH_GATEWAY_STALL_TIMEOUT_S": str(STALL_S),
    }
    cpu = [ServiceProcess("stt_cpu_ws", free_port(), env, logs) for _ in range(2)]
    gpu = ServiceProcess("stt_gpu_ws", free_port(), env, logs)
    detector = ServiceProcess("stt_tiny_ws", free_port(), env, logs)
    gateway = ServiceProcess("gateway", free_port(), env, logs)
    processes = [*cpu, gpu, detector, gateway]
    try:
        for process in processes:
            process.start()
        for process in processes:
            process.wait_healthy()
        mesh = HaMesh(server, cpu, gpu, detector, gateway)
        wait_for_replicas(gateway.url, 3)
        yield mesh
    finally:
        for process in reversed(processes):
            if process.process is not None and process.process.poll() is None:
                os.kill(process.process.pid, signal.SIGCONT)
            process.stop()
        server.stop()


@pytest.fixture
def mesh(ha: HaMesh) -> Iterator[HaMesh]:
    """The HA mesh in cpu mode with every replica up, before and after each test."""
    if not ha.redis.running:
        ha.redis.start()
    ha.set_mode("cpu")
    ha.ensure_running()
    wait_for_mode(ha.gateway.url, "cpu")
    yield ha
    if not ha.redis.running:
        ha.redis.start()
    ha.set_mode("cpu")


def first_ready(result: StreamResult) -> dict[str, Any]:
    return result.messages[0][1]


def assert_whole_clip(result: StreamResult, clip: Any) -> None:
    """Every word reached a final, within the WER bound; finals in time order."""
    streamed = error_rate(clip.text, result.transcript)
    offline = error_rate(clip.text, offline_transcript(clip))
    assert streamed <= offline + WER_MARGIN, (result.transcript, streamed, offline)
    starts = [f["start"] for f in result.of_type("final")]
    assert starts == sorted(starts), starts


async def stream_with_action(url: str, clip: Any, when: str, action) -> StreamResult:  # type: ignore[no-untyped-def]
    """Stream ``clip`` at real-time pace; call ``action(ready, message)`` once on ``when``."""
    done = False
    ready: dict[str, Any] = {}

    def on_message(t: float, message: dict[str, Any]) -> None:
        nonlocal done
        if message.get("type") == "ready":
            ready.update(message)
        if not done and message.get("type") == when:
            done = True
            action(ready, message, t)

    result = await stream_audio(
        url, load_clip_16k(clip.path), language="en", on_message=on_message, frame_ms=40
    )
    assert done, f"no {when} message arrived: {result.messages}"
    return result


async def test_sigkill_mid_utterance_fails_over_without_losing_words(mesh: HaMesh) -> None:
    killed: dict[str, Any] = {}

    def kill(ready: dict[str, Any], message: dict[str, Any], t: float) -> None:
        process = mesh.by_url(ready["backend"])
        assert process.process is not None
        killed.update(url=process.url, t=t)
        os.kill(process.process.pid, signal.SIGKILL)

    result = await stream_with_action(mesh.ws_url, LJ, "partial", kill)
    failovers = result.timed("failover")
    assert len(failovers) == 1, result.messages
    t_failover, failover = failovers[0]
    assert failover["from"] == killed["url"] and failover["to"] != killed["url"]
    assert failover["replayed_ms"] > 0
    assert_whole_clip(result, LJ)
    after = [
        t for t, m in result.messages if m.get("type") in ("partial", "final") and t > t_failover
    ]
    gap = (after[0] if after else float("nan")) - killed["t"]
    print(
        f"SIGKILL failover: message {t_failover - killed['t']:.2f} s after the kill, "
        f"next transcript message {gap:.2f} s after it; replayed {failover['replayed_ms']} ms"
    )


async def test_stalled_backend_is_failed_over(mesh: HaMesh) -> None:
    stopped: dict[str, Any] = {}

    def freeze(ready: dict[str, Any], message: dict[str, Any], t: float) -> None:
        process = mesh.by_url(ready["backend"])
        assert process.process is not None
        stopped.update(pid=process.process.pid, url=process.url, t=t)
        os.kill(process.process.pid, signal.SIGSTOP)

    try:
        result = await stream_with_action(mesh.ws_url, LJ, "partial", freeze)
    finally:
        if stopped:
            os.kill(stopped["pid"], signal.SIGCONT)
    failovers = result.timed("failover")
    assert len(failovers) == 1, result.messages
    t_failover, failover = failovers[0]
    assert failover["from"] == stopped["url"]
    # The stall watch decided, not the pings (they give a frozen backend 2 s longer):
    # speech was pending and the backend went quiet.
    assert failover["reason"].startswith("stalled: no message"), failover
    # Within the stall timeout and a check period (pings would take 2 s more).
    assert t_failover - stopped["t"] < STALL_S + 2.0, t_failover - stopped["t"]
    assert_whole_clip(result, LJ)


async def test_sigterm_drains_live_sessions_and_takes_no_new_ones(mesh: HaMesh) -> None:
    drained: dict[str, Any] = {}

    def terminate(ready: dict[str, Any], message: dict[str, Any], t: float) -> None:
        process = mesh.by_url(ready["backend"])
        assert process.process is not None
        drained.update(process=process, url=process.url)
        os.kill(process.process.pid, signal.SIGTERM)

    async def second_session() -> StreamResult:
        await asyncio.sleep(2.5)  # after the SIGTERM, while the first still streams
        return await stream_audio(
            mesh.ws_url,
            load_clip_16k(JFK.path)[:48000],
            language="en",
            realtime=False,
            trailing_silence_s=1.0,
        )

    first, second = await asyncio.gather(
        stream_with_action(mesh.ws_url, LJ, "partial", terminate), second_session()
    )
    assert first.of_type("failover") == [], first.messages
    assert_whole_clip(first, LJ)
    assert first_ready(second)["backend"] != drained["url"]
    process: ServiceProcess = drained["process"]
    assert process.process is not None
    process.process.wait(timeout=20)  # it exits by itself once its session ended


async def test_mode_change_moves_a_live_session_at_an_utterance_boundary(
    mesh: HaMesh,
) -> None:
    def flip(ready: dict[str, Any], message: dict[str, Any], t: float) -> None:
        assert ready["backend"] != mesh.gpu.url
        mesh.set_mode("gpu")

    result = await stream_with_action(mesh.ws_url, JFK, "final", flip)
    moves = result.of_type("failover")
    assert len(moves) == 1 and moves[0]["reason"] == "mode_change", result.messages
    assert moves[0]["to"] == mesh.gpu.url
    finals = result.of_type("final")
    assert finals[-1]["backend"] == mesh.gpu.url
    assert_whole_clip(result, JFK)


async def test_new_sessions_spread_over_the_least_loaded_replicas(mesh: HaMesh) -> None:
    audio = load_clip_16k(JFK.path)[:32000]
    results = await asyncio.gather(
        *[stream_audio(mesh.ws_url, audio, language="en", trailing_silence_s=0.5) for _ in range(2)]
    )
    backends = {first_ready(r)["backend"] for r in results}
    assert backends == {p.url for p in mesh.cpu}, backends


async def test_redis_outage_under_a_live_session(mesh: HaMesh) -> None:
    async def outage() -> None:
        await asyncio.sleep(1.5)
        mesh.redis.stop()
        await asyncio.sleep(3.0)
        async with httpx.AsyncClient() as http:
            health = (await http.get(f"{mesh.gateway.url}/health")).json()
        assert health["status"] == "degraded" and health["redis"] == "unreachable"
        mesh.redis.start()

    result, _ = await asyncio.gather(
        stream_audio(mesh.ws_url, load_clip_16k(LJ.path), language="en"), outage()
    )
    assert stream_errors(result) == []
    assert_whole_clip(result, LJ)
    # Replicas re-register on their next heartbeat; the gateway recovers by itself.
    body = await asyncio.to_thread(wait_for_replicas, mesh.gateway.url, 3)
    assert body["status"] == "ok" and body["redis"] == "connected"


async def test_session_goes_on_when_the_detector_dies(mesh: HaMesh) -> None:
    def kill_detector(ready: dict[str, Any], message: dict[str, Any], t: float) -> None:
        assert mesh.detector.process is not None
        os.kill(mesh.detector.process.pid, signal.SIGKILL)

    result = await stream_with_action(mesh.ws_url, LJ, "partial", kill_detector)
    assert stream_errors(result) == [] and result.of_type("failover") == []
    assert_whole_clip(result, LJ)


async def test_wyoming_session_fails_over_without_losing_words(mesh: HaMesh) -> None:
    """Home Assistant's transcription through the Wyoming port rides the same session core:
    its replica SIGKILLed mid-utterance, the transcript still has every word."""
    killed: dict[str, Any] = {}

    def kill(sent_s: float, so_far: WyomingTranscription) -> None:
        starts = so_far.of_type("transcript-start")
        if killed or sent_s < 3.0 or not starts:
            return
        context = TranscriptStart.from_event(starts[0]).context or {}
        process = mesh.by_url(context["voicemesh"]["backend"])
        assert process.process is not None
        killed.update(url=process.url, t=sent_s)
        os.kill(process.process.pid, signal.SIGKILL)

    assert mesh.gateway.wyoming_port is not None
    result = await wyoming_transcribe(
        "127.0.0.1",
        mesh.gateway.wyoming_port,
        load_clip_16k(LJ.path),
        realtime=True,
        trailing_silence_s=0.5,
        on_audio=kill,
    )
    assert killed, "no transcript-start arrived before 3 s of audio"
    assert result.errors == []
    served = result.context["voicemesh"]
    assert served["failovers"] == 1 and served["backend"] != killed["url"], served  # type: ignore[index]
    streamed = error_rate(LJ.text, result.text)
    offline = error_rate(LJ.text, offline_transcript(LJ))
    assert streamed <= offline + WER_MARGIN, (result.text, streamed, offline)


async def test_the_python_client_stream_survives_a_killed_replica(mesh: HaMesh) -> None:
    """``voicemesh.client``'s stream over the same kill: a typed failover event, every word."""
    from voicemesh.client import AsyncVoiceMeshClient, FailoverMessage, FinalMessage

    killed: dict[str, str] = {}
    events = []
    async with AsyncVoiceMeshClient(mesh.gateway.url) as vm:
        async for event in vm.stream(LJ.path, language="en", realtime=True):
            events.append(event)
            if event.type == "ready":
                backend = event.backend
            elif event.type == "partial" and not killed:
                process = mesh.by_url(backend)
                assert process.process is not None
                killed["url"] = process.url
                os.kill(process.process.pid, signal.SIGKILL)
    failovers = [e for e in events if isinstance(e, FailoverMessage)]
    assert len(failovers) == 1, events
    assert failovers[0].from_ == killed["url"] and failovers[0].to != killed["url"]
    assert failovers[0].replayed_ms > 0
    assert not [e for e in events if e.type == "reconnect"]  # the client's line never dropped
    finals = [e for e in events if isinstance(e, FinalMessage)]
    transcript = " ".join(f.text for f in finals)
    streamed = error_rate(LJ.text, transcript)
    offline = error_rate(LJ.text, offline_transcript(LJ))
    assert streamed <= offline + WER_MARGIN, (transcript, streamed, offline)
    assert [f.start for f in finals] == sorted(f.start for f in finals)


def serving_replica(mesh: HaMesh) -> ServiceProcess | None:
    """The STT process the mesh's registry shows holding a session (None: none yet)."""
    body = httpx.get(f"{mesh.gateway.url}/v1/admin/services", timeout=2).json()
    for kind in ("stt_cpu_ws", "stt_gpu_ws"):
        for replica in body["services"].get(kind, []):
            # Fresh entries only: a replica an earlier test killed lingers until its TTL.
            if replica["load"]["active_sessions"] > 0 and replica["seen_s_ago"] < 2.0:
                return mesh.by_url(replica["url"])
    return None


def failovers_so_far(mesh: HaMesh) -> float:
    """The gateway's count of failovers (planned moves for a mode change left out)."""
    text = httpx.get(f"{mesh.gateway.url}/metrics", timeout=5).text
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("voicemesh_gateway_failovers_total{") and "mode_change" not in line
    )


async def test_realtime_session_fails_over_invisibly(mesh: HaMesh) -> None:
    """The OpenAI Realtime route rides the same session core: its replica SIGKILLed
    mid-utterance, the SDK sees transcription events only, and every word."""
    killed: dict[str, Any] = {}

    def kill(sent_s: float, so_far: RealtimeResult) -> None:
        if killed or sent_s < 3.0:
            return
        process = serving_replica(mesh)
        if process is not None and process.process is not None:
            killed.update(url=process.url, t=sent_s)
            os.kill(process.process.pid, signal.SIGKILL)

    before = failovers_so_far(mesh)
    result = await realtime_transcribe(
        mesh.gateway.url, "unused", load_clip_16k(LJ.path), rate=24000, on_audio=kill
    )
    assert killed, "no replica showed the session before the audio ended"
    assert failovers_so_far(mesh) == before + 1  # it did move, and the client never heard
    assert result.errors == []
    served = {
        "session.created",
        "session.updated",
        "input_audio_buffer.speech_started",
        "input_audio_buffer.speech_stopped",
        "input_audio_buffer.committed",
        "conversation.item.input_audio_transcription.delta",
        "conversation.item.input_audio_transcription.completed",
    }
    assert {e["type"] for _, e in result.events} <= served
    streamed = error_rate(LJ.text, result.transcript)
    offline = error_rate(LJ.text, offline_transcript(LJ))
    assert streamed <= offline + WER_MARGIN, (result.transcript, streamed, offline)
