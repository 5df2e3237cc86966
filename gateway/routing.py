"""Which backends a new session tries, in order: a pure function, unit-tested alone.

Modes (from Redis, shared by every gateway replica):

* ``gpu``  — GPU replicas first, CPU replicas as the fallback;
* ``cpu``  — CPU replicas; GPU only when no CPU replica is up;
* ``auto`` — GPU replicas while healthy and under the load limit, then CPU, then
  loaded GPU replicas as a last resort.

Within a group the least-loaded replica comes first. Draining and unhealthy
replicas are never chosen, nor one whose transcribing model is not loaded (the
admin unloaded it, or it is loading again).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from voicemesh.registry import ReplicaInfo

if TYPE_CHECKING:
    from gateway.registry_view import RegistryView
    from gateway.settings import GatewaySettings

STT_KINDS = {"gpu": "stt_gpu_ws", "cpu": "stt_cpu_ws"}


def load_share(replica: ReplicaInfo) -> float:
    """Sessions and queued work as a share of the replica's session limit."""
    load = replica.load
    busy = load.active_sessions + load.queue * 0.5
    limit = load.max_sessions or 32
    return busy / max(limit, 1)


def model_ready(replica: ReplicaInfo) -> bool:
    """False while the model ``replica`` transcribes with is unloaded, loading or failed."""
    return all(m.status == "loaded" for m in replica.asr_models if m.use == "transcribe")


def _usable(replicas: Iterable[ReplicaInfo], capability: str) -> list[ReplicaInfo]:
    chosen = [
        r
        for r in replicas
        if r.healthy
        and not r.draining
        and model_ready(r)
        and (not r.capabilities or capability in r.capabilities)
    ]
    return sorted(chosen, key=lambda r: (load_share(r), r.instance_id))


def is_gpu(replica: ReplicaInfo) -> bool:
    """A replica that runs on a GPU (by kind or by the device it reports)."""
    return replica.kind == STT_KINDS["gpu"] or replica.device.startswith("cuda")


def choose_backends(
    mode: str,
    replicas: Iterable[ReplicaInfo],
    *,
    capability: str = "stream",
    gpu_max_load: float = 0.9,
) -> list[ReplicaInfo]:
    """Order the STT replicas a session should try for ``mode``."""
    usable = _usable((r for r in replicas if r.kind in STT_KINDS.values()), capability)
    gpu = [r for r in usable if is_gpu(r)]
    cpu = [r for r in usable if not is_gpu(r)]
    if mode == "gpu":
        return gpu + cpu
    if mode == "cpu":
        return cpu + gpu
    light = [r for r in gpu if load_share(r) < gpu_max_load]
    heavy = [r for r in gpu if load_share(r) >= gpu_max_load]
    return light + cpu + heavy


def mode_moved(view: RegistryView, replica: ReplicaInfo, settings: GatewaySettings) -> bool:
    """After a final: does the routing mode now prefer the other kind of device?"""
    preferred = choose_backends(view.mode, view.snapshot(), gpu_max_load=settings.gpu_max_load)
    return bool(preferred) and is_gpu(preferred[0]) != is_gpu(replica)


def choose_detector(replicas: Iterable[ReplicaInfo]) -> list[ReplicaInfo]:
    """Order the detector replicas, least loaded first."""
    return _usable((r for r in replicas if r.kind == "stt_tiny_ws"), "detect")


def choose_service(
    kind: str, replicas: Iterable[ReplicaInfo], *, capability: str
) -> list[ReplicaInfo]:
    """Order the replicas of one service kind (e.g. ``tts_vits``), least loaded first."""
    return _usable((r for r in replicas if r.kind == kind), capability)
