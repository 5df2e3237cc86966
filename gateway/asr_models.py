"""Which speech-recognition models the mesh holds, read from a registry snapshot: pure.

Every replica lists the ASR models it has loaded (:class:`voicemesh.registry.AsrModel`):
an STT replica (``stt_cpu_ws``, ``stt_gpu_ws``) its Whisper model for ``transcribe``
(streams and files), the speech detector (``stt_tiny_ws``) Whisper tiny.en for
``confirm`` only. A replica that predates that list, or a static one, counts by its
``model`` field. :func:`list_models` is what ``GET /v1/asr/models`` answers;
:func:`transcribers` picks the replicas that can serve a requested model, or says
why none can (404 unknown, 409 known but no replica transcribes with it loaded).
A replica's per-model status is the one it reports (``AsrModel.status``: the admin
unloads and loads models, :mod:`gateway.admin_models`), unless the replica itself
is down or draining. :func:`narrow` applies a requested model, or the mesh's
default one when the request names none.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from gateway.routing import model_ready
from voicemesh.assets.catalogue import CATALOGUE
from voicemesh.errors import ModelConflict, UnknownModel
from voicemesh.registry import AsrModel, ModelStatus, ReplicaInfo

ReplicaStatus = ModelStatus
STATUS_ORDER: tuple[ReplicaStatus, ...] = ("loaded", "loading", "failed", "unloaded")
"""A model's summary status is the first of these that one of its replicas has."""
STT_KINDS = ("stt_cpu_ws", "stt_gpu_ws")
BUNDLED_ASR = tuple(m for m in CATALOGUE if m.kind.startswith("whisper"))
"""The Whisper models the project bundles: known to the mesh even when no replica holds one."""


def models_of(replica: ReplicaInfo) -> list[AsrModel]:
    """The ASR models ``replica`` holds; an STT replica without the list, by its ``model``."""
    if replica.asr_models:
        return replica.asr_models
    if replica.kind in STT_KINDS and replica.model:
        return [AsrModel(name=replica.model, engine=replica.engine, use="transcribe")]
    return []


def same_model(requested: str, name: str) -> bool:
    """``requested`` names the model ``name``: the same text, or aliases of one bundled model."""
    if requested == name:
        return True
    return any(m.answers_to(requested) and m.answers_to(name) for m in BUNDLED_ASR)


def display_name(name: str) -> str:
    """A human name: "Whisper base" for a bundled model, the name itself otherwise."""
    for model in BUNDLED_ASR:
        if model.answers_to(name):
            return model.description.split(",")[0]
    return name


def transcribe_model(replica: ReplicaInfo) -> AsrModel | None:
    """The model ``replica`` transcribes with, if it transcribes at all."""
    return next((m for m in models_of(replica) if m.use == "transcribe"), None)


def replica_status(
    replica: ReplicaInfo, held: bool, model: AsrModel | None = None
) -> ReplicaStatus:
    """``failed`` when unhealthy or held out after a failure, ``unloaded`` when draining,
    else what the replica reports for ``model``."""
    if not replica.healthy or held:
        return "failed"
    if replica.draining:
        return "unloaded"
    return model.status if model is not None else "loaded"


def summary_status(statuses: Iterable[ReplicaStatus]) -> ReplicaStatus:
    """One status for a model from its replicas' (``unloaded`` when none holds it)."""
    found = set(statuses)
    return next((s for s in STATUS_ORDER if s in found), "unloaded")


def _mean(values: Iterable[float | None], digits: int) -> float | None:
    measured = [v for v in values if v is not None]
    return round(sum(measured) / len(measured), digits) if measured else None


@dataclass
class Holding:
    """One replica holding one model."""

    replica: ReplicaInfo
    model: AsrModel
    status: ReplicaStatus


def holdings(replicas: Iterable[ReplicaInfo], held_ids: set[str]) -> list[Holding]:
    """Every (replica, model) pair of the snapshot, with the replica's status."""
    return [
        Holding(r, m, replica_status(r, r.instance_id in held_ids, m))
        for r in replicas
        for m in models_of(r)
    ]


def describe_model(name: str, held: list[Holding], *, default: bool) -> dict[str, Any]:
    """One entry of ``GET /v1/asr/models``."""
    transcribing = [h for h in held if h.model.use == "transcribe"]
    languages = sorted({code for h in held for code in h.model.languages})
    engines = sorted({h.model.engine for h in held if h.model.engine})
    return {
        "id": name,
        "name": display_name(name),
        "type": engines[0] if len(engines) == 1 else ("/".join(engines) or None),
        "status": summary_status(h.status for h in held),
        "default": default,
        "transcribes_files": bool(transcribing),
        "capabilities": {
            "streaming": any("stream" in h.replica.capabilities for h in transcribing),
            "diarization": False,
            "languages": languages,
            "timestamps": bool(transcribing),
        },
        "performance": {
            "rtf": _mean((h.replica.load.rtf for h in held), 3),
            "latency_ms": _mean((h.replica.load.latency_ms for h in held), 1),
        },
        "replicas": [
            {
                "instance_id": h.replica.instance_id,
                "kind": h.replica.kind,
                "device": h.replica.device,
                "use": h.model.use,
                "status": h.status,
                "error": h.model.error,
                "model_load_time_ms": h.model.load_ms,
                "rtf": h.replica.load.rtf,
                "latency_ms": h.replica.load.latency_ms,
            }
            for h in held
        ],
    }


def list_models(
    replicas: list[ReplicaInfo],
    held_ids: set[str],
    default_route: list[ReplicaInfo],
    chosen_default: str | None = None,
) -> list[dict[str, Any]]:
    """Every ASR model the registry shows, then the bundled ones no replica holds.

    The default is ``chosen_default`` (the admin's) when set, else the model of the
    first replica of ``default_route``, the order a request without ``model`` tries.
    """
    routed = transcribe_model(default_route[0]) if default_route else None
    first = AsrModel(name=chosen_default) if chosen_default else routed
    by_name: dict[str, list[Holding]] = {}
    for holding in holdings(replicas, held_ids):
        key = next((n for n in by_name if same_model(holding.model.name, n)), holding.model.name)
        by_name.setdefault(key, []).append(holding)
    for bundled in BUNDLED_ASR:
        if not any(same_model(bundled.name, n) for n in by_name):
            by_name[bundled.name] = []
    return [
        describe_model(name, held, default=first is not None and same_model(first.name, name))
        for name, held in by_name.items()
    ]


def transcribes_with(replica: ReplicaInfo, model: str) -> bool:
    """``replica`` transcribes (streams and files) with the model ``model`` names."""
    held = transcribe_model(replica)
    return held is not None and same_model(model, held.name)


def narrow(
    replicas: list[ReplicaInfo], model: str | None, default: str | None
) -> list[ReplicaInfo]:
    """The ``replicas`` that transcribe with ``model``; without one, all of them with the
    ``default`` model's first (the others still serve when none of those can)."""
    if model:
        return [r for r in replicas if transcribes_with(r, model)]
    if default:
        return sorted(replicas, key=lambda r: not transcribes_with(r, default))
    return list(replicas)


def check_model(model: str, known: list[ReplicaInfo]) -> None:
    """Refuse a model no replica of ``known`` can transcribe with, saying which can.

    ``known`` is every replica this gateway knows (held-out ones too). A model none of
    them holds and no bundled model answers to is :class:`UnknownModel` (404); a known
    model no replica transcribes with is :class:`ModelConflict` (409).
    """
    if any(transcribes_with(r, model) and model_ready(r) for r in known):
        return
    can = sorted(
        {m.name for r in known if (m := transcribe_model(r)) is not None and model_ready(r)}
    )
    silent = any(r.kind in STT_KINDS for r in known)  # static backends name no model
    none = "none reported (leave model out)" if silent else "none (no STT replica is up)"
    offer = ", ".join(can) if can else none
    held = {m.name for r in known for m in models_of(r)} | {b.name for b in BUNDLED_ASR}
    if not any(same_model(model, name) for name in held):
        raise UnknownModel(f"no ASR model named {model!r} in the mesh; models available: {offer}")
    raise ModelConflict(
        f"model {model!r} is known but no replica transcribes with it (the speech detector "
        f"only confirms speech with it, or no replica has it loaded); models that can: {offer}"
    )
