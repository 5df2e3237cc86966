"""The fault matrix: one fault per case while four sessions stream and TTS calls run.

Each case drives the tier's mesh (:mod:`tests.faults.conftest`) through nginx with
:func:`tests.faults.driver.drive`, injects its fault six seconds in, and asserts on every
session: no lost utterance, no final twice, times in order, no fatal error; and on the
TTS calls: none answered 200 with cut audio, every refusal a 5xx with a code and
``retry_after``. Each case also records its row (sessions affected, the gap from the
fault to each session's next message); ``benchmarks/fault_matrix.py`` prints the table.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.faults.conftest import FaultMesh, wait_for_routes
from tests.faults.driver import Outcome, drive, wav_is_whole
from tests.faults.slow_proxy import DelayingProxy
from tests.harness import clip_named, error_rate
from voicemesh.client import AsyncVoiceMeshClient, BusyError
from voicemesh.registry import RegistryClient, ReplicaInfo, ReplicaLoad

pytestmark = [pytest.mark.faults, pytest.mark.timeout(600)]

SHORT = clip_named("pocketsphinx-librivox-0880.wav")
REPORT = os.environ.get("FAULT_MATRIX_REPORT")
"""Where the rows go as JSON lines (the benchmark sets it); unset: nowhere."""


@pytest.fixture
def mesh(fault_mesh: FaultMesh) -> Iterator[FaultMesh]:
    """The tier's mesh whole before each case, and healed after it."""
    fault_mesh.heal()
    yield fault_mesh
    fault_mesh.heal()


def record(row: dict[str, Any]) -> None:
    if REPORT:
        with Path(REPORT).open("a", encoding="utf-8") as out:
            out.write(json.dumps(row) + "\n")


def check(outcome: Outcome) -> None:
    problems = outcome.problems()
    assert not problems, "\n".join(problems)


def busiest_stt(runs: list[Any]) -> str:
    """The STT replica the most sessions were opened on."""
    urls = [e.backend for r in runs for _, e in r.events if e.type == "ready"]
    return max(set(urls), key=urls.count)


def kill(process: Any, sig: signal.Signals = signal.SIGKILL) -> None:
    assert process.process is not None and process.process.poll() is None
    os.kill(process.process.pid, sig)


async def run_case(mesh: FaultMesh, fault: Callable[[list[Any]], Any], **options: Any) -> Outcome:
    """Drive the mesh through nginx; ``fault`` gets the live session runs (who serves whom)."""
    return await drive(mesh.url, fault, **options)


async def test_sigkill_of_the_stt_replica_serving_sessions(mesh: FaultMesh) -> None:
    killed: list[str] = []

    def fault(runs: list[Any]) -> None:
        target = busiest_stt(runs)
        killed.append(target)
        kill(mesh.by_url(target))

    outcome = await run_case(mesh, fault)
    record(outcome.row("SIGKILL of the STT replica serving sessions", ("failover",)))
    check(outcome)
    moved = outcome.affected(("failover",))
    assert moved, "no session failed over"
    for run in moved:
        assert any(e.to != killed[0] for e in run.of("failover"))


async def test_sigkill_of_the_detector(mesh: FaultMesh) -> None:
    outcome = await run_case(mesh, lambda runs: kill(mesh.detector))
    record(outcome.row("SIGKILL of the detector", ("final",)))
    check(outcome)
    # Endpointing went on from the engines' own VAD: finals kept coming after the fault.
    assert outcome.fault_at is not None
    for run in outcome.sessions:
        assert any(t > outcome.fault_at for t, e in run.events if e.type == "final"), run.name


async def test_sigkill_of_a_tts_replica_mid_request(mesh: FaultMesh) -> None:
    outcome = await run_case(mesh, lambda runs: kill(mesh.tts[0]), fault_at_s=4.0)
    record(outcome.row("SIGKILL of a tts_vits replica mid-request", ("final",)))
    check(outcome)
    assert outcome.fault_at is not None
    after = [c for c in outcome.tts if c.at >= outcome.fault_at]
    assert after and all(c.status in (200, 503) for c in after), after
    assert any(c.status == 200 and c.whole for c in after)  # the other replica serves


def cpu_seconds(process: Any) -> float:
    """CPU time (user + system) a service process has used so far, from /proc."""
    fields = Path(f"/proc/{process.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def synthesizing(processes: list[Any], timeout_s: float = 20.0) -> Any:
    """The process busy on a request now (the one that used the most CPU over 0.3 s)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        before = [cpu_seconds(p) for p in processes]
        time.sleep(0.3)
        used = [cpu_seconds(p) - b for p, b in zip(processes, before, strict=True)]
        if max(used) >= 0.15:
            return processes[used.index(max(used))]
    raise AssertionError("no cloning replica was busy on a request")


def clone_voice(url: str) -> str:
    """A cloned voice made through nginx from a shared clip; its id."""
    reference = clip_named("pocketsphinx-librivox-0870.wav")
    response = httpx.post(
        f"{url}/v1/clone/voices",
        files={"audio": (reference.file, reference.path.read_bytes(), "audio/wav")},
        data={"name": "fault tier", "prompt_text": reference.text, "consent": "true"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    return str(response.json()["voice_id"])


async def test_sigkill_of_a_clone_replica_mid_request(mesh: FaultMesh) -> None:
    voice = clone_voice(mesh.url)
    killed: list[tuple[str, float]] = []

    def fault(runs: list[Any]) -> None:
        busy = synthesizing(mesh.clone)
        kill(busy)
        killed.append((busy.url, time.monotonic()))

    outcome = await run_case(mesh, fault, fault_at_s=3.0, clone_voice=voice)
    record(outcome.row("SIGKILL of a tts_clone replica mid-request", ("final",)))
    check(outcome)
    url, at = killed[0]
    # The call in flight when the replica died was served by the other one, or refused
    # with a code and retry_after (check()); none came back cut, and later ones were served.
    in_flight = [c for c in outcome.clone if c.at < at < (c.finished or float("inf"))]
    assert in_flight, outcome.clone
    for call in in_flight:
        assert call.status in (200, 503), call
        if call.status == 200:
            assert call.whole and call.failover and call.backend != url, call
    # And the survivor goes on serving the voice.
    async with httpx.AsyncClient(base_url=mesh.url, timeout=60) as client:
        again = await client.post(
            "/v1/clone/synthesize",
            json={"voice_id": voice, "text": "Still here after the fault.", "format": "wav"},
        )
    assert again.status_code == 200 and wav_is_whole(again.content), again.text
    assert again.headers["x-voicemesh-backend"] != url


def live_sessions(gateway: Any) -> float:
    """The streaming sessions a gateway serves now (its own metrics)."""
    text = httpx.get(f"{gateway.url}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('voicemesh_active_sessions{service="gateway"}'):
            return float(line.split()[-1])
    return 0.0


async def test_sigkill_of_a_gateway_behind_nginx(mesh: FaultMesh) -> None:
    def fault(runs: list[Any]) -> None:
        kill(max(mesh.gateways, key=live_sessions))  # the one serving the most sessions

    outcome = await run_case(mesh, fault)
    record(outcome.row("SIGKILL of a gateway (two behind nginx)", ("resumed",)))
    check(outcome)
    resumed = outcome.affected(("resumed",))
    reconnected = outcome.affected(("reconnect",))
    assert reconnected, "no session was on the killed gateway"
    errors = [(r.name, e.code, e.message) for r in reconnected for e in r.of("error")]
    assert {r.name for r in resumed} == {r.name for r in reconnected}, errors
    for run in resumed:
        indexes = [f.index for f in run.of("final")]
        assert indexes == list(range(len(indexes))), (run.name, indexes)


async def short_session(url: str) -> str:
    """A new session's transcript of a short clip, sent as fast as it goes."""
    async with AsyncVoiceMeshClient(url) as vm:
        events = [e async for e in vm.stream(SHORT.path, language="en")]
    return " ".join(e.text for e in events if e.type == "final")


async def test_redis_stopped_for_ten_seconds(mesh: FaultMesh) -> None:
    during: list[str] = []

    def fault(runs: list[Any]) -> None:
        mesh.redis.stop()
        began = time.monotonic()
        time.sleep(2)
        # A new session is admitted from the registry snapshot the gateways kept.
        during.append(asyncio.run(short_session(mesh.url)))
        time.sleep(max(0.0, 10 - (time.monotonic() - began)))
        mesh.redis.start()

    outcome = await run_case(mesh, fault, fault_at_s=3.0)
    record(outcome.row("Redis stopped for 10 s, then started", ("error", "failover")))
    check(outcome)
    assert during and error_rate(SHORT.text, during[0]) <= 25.0, during


def routes(gateway: Any) -> list[str]:
    """The STT replicas a new session on ``gateway`` would try now, in order."""
    route = httpx.get(f"{gateway.url}/health", timeout=5).json()["stt_route"]
    return [str(url) for url in route]


async def first_backend(url: str) -> str | None:
    """The STT replica a new session of a short clip is opened on (its ``ready``), or
    ``"busy"`` when the live replica, taking the hung one's sessions, refused it for load."""
    async with AsyncVoiceMeshClient(url) as vm:
        try:
            events = [e async for e in vm.stream(SHORT.path, language="en")]
        except BusyError as exc:
            assert exc.retry_after, exc  # refused with when to retry, not cut
            return "busy"
    return next((e.backend for e in events if e.type == "ready"), None)


async def test_sigstop_of_an_stt_replica_for_five_seconds(mesh: FaultMesh) -> None:
    stopped: list[Any] = []
    during: dict[str, Any] = {}

    def fault(runs: list[Any]) -> None:
        process = mesh.by_url(busiest_stt(runs))
        stopped.append(process)
        kill(process, signal.SIGSTOP)
        began = time.monotonic()
        time.sleep(3)  # a few missed heartbeats (0.5 s each here), long before its TTL
        during["routes"] = [routes(g) for g in mesh.gateways]
        with ThreadPoolExecutor(1) as pool:  # opened while it hangs, and it may outlast it
            new_session = pool.submit(asyncio.run, first_backend(mesh.url))
            time.sleep(max(0.0, 5 - (time.monotonic() - began)))
            kill(process, signal.SIGCONT)
            during["new session"] = new_session.result(timeout=60)

    outcome = await run_case(mesh, fault)
    record(outcome.row("SIGSTOP of an STT replica for 5 s", ("failover",)))
    check(outcome)
    hung = stopped[0].url
    # While it hung, no gateway routed to it: a new session went to the other replica
    # (or was refused busy by it, when it was full with the hung one's sessions).
    assert all(hung not in route for route in during["routes"]), during
    assert during["new session"] not in (None, hung), during
    # Awake and beating again, it is back in every gateway's route.
    wait_for_routes([g.url for g in mesh.gateways], stt=2, tts=2, timeout_s=20)
    assert all(hung in routes(g) for g in mesh.gateways)


async def test_nginx_reload_under_load(mesh: FaultMesh) -> None:
    def fault(runs: list[Any]) -> None:
        assert mesh.nginx is not None
        os.kill(mesh.nginx.pid, signal.SIGHUP)

    outcome = await run_case(mesh, fault)
    record(outcome.row("nginx reload under load", ("reconnect", "resumed")))
    check(outcome)


def slow_entry(proxy: DelayingProxy) -> ReplicaInfo:
    """The registry entry of the delaying proxy: one more CPU Whisper base replica."""
    now = time.time()
    return ReplicaInfo(
        instance_id="slow-proxy",
        kind="stt_cpu_ws",
        url=proxy.url,
        device="cpu",
        model="base",
        engine="faster-whisper",
        capabilities=["stream", "transcribe"],
        load=ReplicaLoad(max_sessions=8),
        started_at=now,
        updated_at=now,
    )


async def test_a_backend_that_answers_slowly_is_failed_over(mesh: FaultMesh) -> None:
    target = mesh.stt[0].url.replace("http://", "ws://")
    registry = RegistryClient(mesh.redis.url, ttl_s=3600)
    with DelayingProxy(target) as proxy:
        await registry.register(slow_entry(proxy))
        try:
            wait_for_routes([g.url for g in mesh.gateways], stt=3, tts=2)

            def fault(runs: list[Any]) -> None:
                proxy.delay_s = 10.0  # past the gateways' stall timeout

            outcome = await run_case(mesh, fault)
        finally:
            await registry.deregister("stt_cpu_ws", "slow-proxy")
            await registry.close()
    record(outcome.row("a backend that answers slowly (a delaying proxy)", ("failover",)))
    check(outcome)
    on_proxy = [r for r in outcome.sessions if r.of("ready")[0].backend == proxy.url]
    assert on_proxy, "no session was routed to the slow backend"
    for run in on_proxy:
        moves = run.of("failover")
        assert moves and moves[0].to != proxy.url and "stall" in moves[0].reason, moves
