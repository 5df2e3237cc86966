"""Process usage for the heartbeat, the status request figures and the new limits: pure."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from gateway.admin_stats import mesh_usage, request_stats
from gateway.limits import GatewayLimits
from gateway.state import RequestStats, request_type
from voicemesh.registry import ReplicaInfo, ReplicaLoad
from voicemesh.usage import ProcessUsage, parse_compute_apps

pytestmark = pytest.mark.unit


def test_compute_apps_are_read_per_pid_and_summed_over_gpus() -> None:
    # nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits
    text = "4242, 1536\n4343, [N/A]\n4242, 512\n\nnot a line\n77, 300\n"
    assert parse_compute_apps(text) == {4242: 2048.0, 77: 300.0}


def test_memory_follows_what_the_process_holds() -> None:
    # A child process of its own: in this test process other tests' threads and caches
    # free memory at any moment, which hid part of the block from the difference in CI.
    child = subprocess.Popen(
        [sys.executable, "-c", _HOLDER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        assert child.stdout.readline().strip() == "ready"
        usage = ProcessUsage(pid=child.pid, gpu_reader=lambda: None)
        before = usage.sample().memory_mb
        child.stdin.write("hold\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "held"
        held = usage.sample().memory_mb
        child.stdin.write("free\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "freed"
        freed = usage.sample().memory_mb
    finally:
        child.kill()
        child.wait()
    assert held - before > 180, (before, held)
    assert held - freed > 180, (held, freed)


# Holds 200 MB with every page touched (resident), then frees it, on command.
_HOLDER = """
import sys
print("ready", flush=True)
sys.stdin.readline()
block = bytearray(200 * 1024 * 1024)
block[::4096] = b"\\x01" * len(block[::4096])
print("held", flush=True)
sys.stdin.readline()
del block
print("freed", flush=True)
sys.stdin.readline()
"""


def test_cpu_is_the_share_since_the_last_sample() -> None:
    usage = ProcessUsage(gpu_reader=lambda: None)
    usage.sample()
    cpu_before, wall_before = _cpu_s(), time.monotonic()
    end = time.perf_counter() + 0.5
    while time.perf_counter() < end:
        pass  # one core busy (as far as a shared machine lets it be)
    busy = usage.sample().cpu_percent
    expected = 100 * (_cpu_s() - cpu_before) / (time.monotonic() - wall_before)
    assert expected > 20, expected  # the loop did run
    assert busy == pytest.approx(expected, abs=15)
    time.sleep(0.5)
    idle = usage.sample().cpu_percent
    assert idle < busy / 2, (idle, busy)


def _cpu_s() -> float:
    times = os.times()
    return times.user + times.system


def test_gpu_memory_only_on_cuda_and_only_this_process_fake_driver() -> None:
    # A fake driver table: no CUDA device here. The real reader is nvidia-smi.
    pid = os.getpid()
    usage = ProcessUsage(gpu_reader=lambda: {pid: 2048.0, pid + 1: 9999.0})
    assert usage.sample("cpu").gpu_memory_mb is None
    assert usage.sample("cuda").gpu_memory_mb == 2048.0
    assert usage.sample("cuda:1").gpu_memory_mb == 2048.0
    other = ProcessUsage(gpu_reader=lambda: {pid + 1: 9999.0})
    assert other.sample("cuda").gpu_memory_mb is None  # never another process's figure
    assert ProcessUsage(gpu_reader=lambda: None).sample("cuda").gpu_memory_mb is None


def _replica(instance_id: str, **load: float | None) -> ReplicaInfo:
    now = time.time()
    return ReplicaInfo(
        instance_id=instance_id,
        kind="stt_cpu_ws",
        url="http://127.0.0.1:9",
        load=ReplicaLoad(**load),
        started_at=now,
        updated_at=now,
    )


def test_mesh_usage_sums_the_parts_that_report_and_lists_each() -> None:
    gateway = {"instance_id": "gw", "memory_mb": 100.0, "cpu_percent": 5.0, "gpu_memory_mb": None}
    replicas = [
        _replica("a", memory_mb=300.5, cpu_percent=50.0),
        _replica("b", memory_mb=200.0, cpu_percent=25.5, gpu_memory_mb=1024.0),
        _replica("static"),  # reports nothing (a static backend)
    ]
    usage = mesh_usage(gateway, replicas)
    assert usage["memory_usage_mb"] == 600.5
    assert usage["cpu_usage_percent"] == 80.5
    assert usage["gpu_memory_mb"] == 1024.0
    assert [p["instance_id"] for p in usage["usage_by_replica"]] == ["gw", "a", "b", "static"]
    assert mesh_usage(gateway, replicas[:1])["gpu_memory_mb"] is None


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("stream", "asr"),
        ("transcription", "asr"),
        ("speech", "tts"),
        ("tts_synthesize", "tts"),
        ("tts_compare", "tts"),
        ("wyoming_tts", "tts"),
        ("clone_synthesize", "clone"),
        ("clone_voices", "clone"),
        ("benchmark", "other"),
    ],
)
def test_request_types(kind: str, expected: str) -> None:
    assert request_type(kind) == expected


def test_request_stats_count_asr_and_tts_and_leave_finals_out() -> None:
    stats = RequestStats()
    stats.record("stream", ok=True)
    stats.record("transcription", ok=False, latency_ms=100.0)
    stats.record("speech", ok=True, latency_ms=300.0)
    stats.record("clone_synthesize", ok=True, latency_ms=500.0)
    stats.record("final", ok=True, latency_ms=9999.0)  # one utterance of the stream
    figures = request_stats(stats)
    assert figures["total_requests"] == 4
    assert figures["asr_requests"] == 2
    assert figures["tts_requests"] == 2
    assert figures["avg_response_time_ms"] == 300.0
    assert figures["error_rate_percent"] == 25.0
    empty = request_stats(RequestStats())
    assert (empty["total_requests"], empty["avg_response_time_ms"]) == (0, None)


def test_new_limits_apply_to_the_next_session_and_keep_the_held_ones() -> None:
    limits = GatewayLimits(
        requests_per_key=100, requests_total=100, sessions_per_key=3, sessions_total=10
    )
    for _ in range(2):
        assert limits.admit_session("k") is None
    limits.set_limits(
        requests_per_key=2,
        requests_total=100,
        sessions_per_key=1,
        sessions_total=10,
        busy_retry_after_s=5,
    )
    refused = limits.admit_session("k")
    assert refused is not None and refused.code == "busy" and refused.scope == "key"
    assert refused.retry_after == 5
    limits.end_session("k")
    limits.end_session("k")
    # Two requests of "k" are already in the minute's window: the new rate limit holds.
    rate = limits.admit_request("k")
    assert rate is not None and rate.code == "rate_limited"
