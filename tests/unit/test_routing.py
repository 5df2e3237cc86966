"""The backend order for a session: a pure function of mode, registry and capability."""

from __future__ import annotations

import pytest

from gateway.routing import choose_backends, choose_detector
from voicemesh.registry import ReplicaInfo, ReplicaLoad

pytestmark = pytest.mark.unit


def replica(
    name: str,
    kind: str,
    *,
    sessions: int = 0,
    device: str = "cpu",
    draining: bool = False,
    healthy: bool = True,
    capabilities: tuple[str, ...] = ("transcribe", "stream"),
) -> ReplicaInfo:
    return ReplicaInfo(
        instance_id=name,
        kind=kind,
        url=f"http://{name}",
        device=device,
        capabilities=list(capabilities),
        draining=draining,
        healthy=healthy,
        load=ReplicaLoad(active_sessions=sessions, max_sessions=10),
        started_at=0.0,
        updated_at=0.0,
    )


CPU_A = replica("cpu-a", "stt_cpu_ws", sessions=3)
CPU_B = replica("cpu-b", "stt_cpu_ws", sessions=1)
GPU = replica("gpu", "stt_gpu_ws", device="cuda")
GPU_FULL = replica("gpu-full", "stt_gpu_ws", device="cuda", sessions=10)
DETECTOR = replica("det", "stt_tiny_ws", capabilities=("detect",))


def names(replicas: list[ReplicaInfo]) -> list[str]:
    return [r.instance_id for r in replicas]


def test_gpu_mode_prefers_gpu_then_least_loaded_cpu() -> None:
    assert names(choose_backends("gpu", [CPU_A, CPU_B, GPU])) == ["gpu", "cpu-b", "cpu-a"]


def test_cpu_mode_uses_gpu_only_as_last_resort() -> None:
    assert names(choose_backends("cpu", [GPU, CPU_A, CPU_B])) == ["cpu-b", "cpu-a", "gpu"]
    assert names(choose_backends("cpu", [GPU])) == ["gpu"]


def test_auto_skips_a_loaded_gpu_until_cpu_is_exhausted() -> None:
    assert names(choose_backends("auto", [GPU_FULL, CPU_A])) == ["cpu-a", "gpu-full"]
    assert names(choose_backends("auto", [GPU, CPU_A])) == ["gpu", "cpu-a"]


def test_draining_unhealthy_and_incapable_replicas_are_never_chosen() -> None:
    draining = replica("d", "stt_cpu_ws", draining=True)
    sick = replica("s", "stt_cpu_ws", healthy=False)
    file_only = replica("f", "stt_cpu_ws", capabilities=("transcribe",))
    assert choose_backends("auto", [draining, sick, file_only, DETECTOR]) == []


def test_detector_choice_ignores_stt_replicas() -> None:
    assert names(choose_detector([CPU_A, DETECTOR])) == ["det"]
