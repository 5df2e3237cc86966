"""The mesh-wide figures of ``GET /v1/admin/status`` and the status feed: pure.

* usage: memory (MB), CPU (% of one core) and GPU memory (MB) summed over this
  gateway's process and every registered replica, whose heartbeat stamps its own
  (:mod:`voicemesh.usage`); ``usage_by_replica`` lists each part so the sum can be
  checked. GPU memory is ``None`` when no part reports any (no CUDA replica).
* models: which ASR and TTS models the registered replicas hold, and each model's
  status (``loaded``, ``loading``, ``unloaded``, ``failed``; :mod:`gateway.asr_models`).
* request stats: this gateway's own requests (each gateway replica counts only what it
  served), sorted into ASR (streams over WebSocket, Wyoming or Realtime, file
  transcriptions) and TTS (speech, synthesis, voices, compare, cloning).
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psutil

from gateway.asr_models import ReplicaStatus, holdings, summary_status
from gateway.state import NOT_REQUESTS, GatewayState, RequestStats, request_type
from voicemesh.registry import ReplicaInfo


def request_stats(stats: RequestStats) -> dict[str, Any]:
    """The specification's request figures of this gateway (cloning counts as TTS).

    ``avg_response_time_ms`` is the mean of the last 500 timed requests of each kind
    (streams are not timed: a stream lasts as long as its speaker talks).
    """
    totals = {k: n for k, n in stats.totals.items() if k not in NOT_REQUESTS}
    total = sum(totals.values())
    errors = sum(stats.errors.get(k, 0) for k in totals)
    by_type: dict[str, int] = {}
    for kind, count in totals.items():
        by_type[request_type(kind)] = by_type.get(request_type(kind), 0) + count
    latencies = [ms for k in totals for ms in stats.latencies_ms.get(k, ())]
    return {
        "total_requests": total,
        "asr_requests": by_type.get("asr", 0),
        "tts_requests": by_type.get("tts", 0) + by_type.get("clone", 0),
        "avg_response_time_ms": round(sum(latencies) / len(latencies), 1) if latencies else None,
        "error_rate_percent": round(100 * errors / total, 2) if total else 0.0,
        "scope": "this gateway",
    }


def _add(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(sum(present), 1) if present else None


def mesh_usage(gateway: dict[str, Any], replicas: list[ReplicaInfo]) -> dict[str, Any]:
    """Memory, CPU and GPU memory of the gateway part plus each replica, and their sums."""
    parts = [gateway] + [
        {
            "instance_id": r.instance_id,
            "kind": r.kind,
            "device": r.device,
            "memory_mb": r.load.memory_mb,
            "cpu_percent": r.load.cpu_percent,
            "gpu_memory_mb": r.load.gpu_memory_mb,
        }
        for r in replicas
    ]
    return {
        "memory_usage_mb": _add(p["memory_mb"] for p in parts) or 0.0,
        "cpu_usage_percent": _add(p["cpu_percent"] for p in parts) or 0.0,
        "gpu_memory_mb": _add(p["gpu_memory_mb"] for p in parts),
        "usage_by_replica": parts,
    }


def model_status(replicas: list[ReplicaInfo], held_ids: set[str]) -> dict[str, str]:
    """Every model a replica holds, by name, with its status over the replicas holding it.

    ASR models come from the replicas' model lists; a TTS replica holds its ``model``.
    """
    statuses: dict[str, list[ReplicaStatus]] = {}
    for holding in holdings(replicas, held_ids):
        statuses.setdefault(holding.model.name, []).append(holding.status)
    for replica in replicas:
        if replica.kind.startswith("tts") and replica.model:
            failed = not replica.healthy or replica.instance_id in held_ids
            status: ReplicaStatus = "failed" if failed else "loaded"
            statuses.setdefault(replica.model, []).append(status)
    return {name: summary_status(found) for name, found in sorted(statuses.items())}


def loaded_models(replicas: list[ReplicaInfo], held_ids: set[str]) -> dict[str, list[str]]:
    """The ASR and TTS models at least one replica holds loaded now."""
    asr = {h.model.name for h in holdings(replicas, held_ids) if h.status == "loaded"}
    tts = {
        r.model
        for r in replicas
        if r.kind.startswith("tts") and r.model and r.healthy and r.instance_id not in held_ids
    }
    return {"asr": sorted(asr), "tts": sorted(tts)}


def queue_length(replicas: list[ReplicaInfo]) -> int:
    """Requests waiting for an engine, over every replica."""
    return sum(r.load.queue for r in replicas)


def status_fields(
    state: GatewayState, process: dict[str, Any], reasons: list[str]
) -> dict[str, Any]:
    """The specification's fields of ``GET /v1/admin/status``.

    ``process`` is this gateway's own usage (``rss_mb``, ``cpu_percent``); ``reasons``
    why the gateway cannot take work (empty: ``ok``).
    """
    view = state.view
    known = view.snapshot(include_held=True)
    held = {r.instance_id for r in known} - {r.instance_id for r in view.snapshot()}
    gateway = {
        "instance_id": state.settings.instance_id,
        "kind": "gateway",
        "device": "cpu",
        "memory_mb": process["rss_mb"],
        "cpu_percent": process["cpu_percent"],
        "gpu_memory_mb": None,
    }
    return {
        "status": "degraded" if reasons else "ok",
        "status_reasons": reasons,
        "uptime_seconds": round(time.time() - state.started_at, 1),
        **mesh_usage(gateway, known),
        "loaded_models": loaded_models(known, held),
        "model_status": model_status(known, held),
        # The gateway host's size: what the dashboard draws the summed usage against.
        "cpu_count": psutil.cpu_count() or 1,
        "memory_total_mb": round(psutil.virtual_memory().total / (1024 * 1024)),
        "queue_length": queue_length(known),
        "active_requests": state.active_sessions + state.in_flight_requests,
        "request_stats": request_stats(state.stats),
    }
