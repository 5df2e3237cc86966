"""Model management for the admin: list, unload, load, and the mesh's default ASR model.

* ``GET /v1/admin/models``: every ASR model (as ``GET /v1/asr/models`` lists it) and
  every TTS model the registry shows, with per-replica status and which is default;
* ``POST /v1/admin/models/{id}/unload`` and ``/load`` ``{"force", "replicas"}``:
  calls ``POST /v1/model/unload|load`` on every STT replica transcribing with the
  model (or the ``replicas`` named) and answers what each one did. Unloading the
  last loaded STT model of the mesh needs ``force``; a replica with open sessions
  refuses without it (409 ``model_in_use``, the per-replica answers in the body);
* ``POST /v1/admin/models/{id}/default``: the model a request that names none goes
  to first, stored in Redis beside the routing mode so every gateway follows it.

TTS models are not unloadable (409 ``not_unloadable``): a TTS replica loads each
voice model on first use and holds it for the next request; the registry has no
per-model state for them to report.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from gateway.asr import mesh_asr_models
from gateway.asr_models import (
    STT_KINDS,
    ReplicaStatus,
    check_model,
    same_model,
    summary_status,
    transcribe_model,
    transcribes_with,
)
from gateway.auth import require_admin
from gateway.deps import GatewayStateDep
from gateway.routing import model_ready
from gateway.state import GatewayState
from voicemesh.errors import (
    BadRequest,
    EngineUnavailable,
    ModelConflict,
    ModelInUse,
    UnknownModel,
    backend_errors,
)
from voicemesh.http import error_body
from voicemesh.registry import ReplicaInfo

_LOGGER = logging.getLogger(__name__)

TTS_KINDS = ("tts_vits", "tts_clone")
Action = Literal["load", "unload"]

router = APIRouter(prefix="/v1/admin/models", tags=["admin"], dependencies=[Depends(require_admin)])
"""Admin routes: the admin key, or any client key when none is set."""


class ModelAction(BaseModel):
    """Body of ``POST /v1/admin/models/{id}/load|unload`` (optional; unknown fields: 422)."""

    model_config = ConfigDict(extra="forbid")

    force: bool = False
    """Unload even the mesh's last loaded STT model, ending open sessions."""
    replicas: list[str] | None = Field(default=None, min_length=1)
    """Instance ids to act on; every replica holding the model when left out."""


def tts_models(state: GatewayState) -> list[dict[str, Any]]:
    """The TTS models of the registry: one per model a ``tts_vits``/``tts_clone`` serves."""
    view = state.view
    routable = {r.instance_id for r in view.snapshot()}
    by_model: dict[str, list[ReplicaInfo]] = {}
    for replica in view.snapshot(include_held=True):
        if replica.kind in TTS_KINDS and replica.model:
            by_model.setdefault(replica.model, []).append(replica)
    models = []
    for name, replicas in by_model.items():
        statuses: list[ReplicaStatus] = [
            "loaded" if r.healthy and not r.draining and r.instance_id in routable else "failed"
            for r in replicas
        ]
        rows = [
            {
                "instance_id": r.instance_id,
                "kind": r.kind,
                "device": r.device,
                "status": status,
                "rtf": r.load.rtf,
            }
            for r, status in zip(replicas, statuses, strict=True)
        ]
        models.append(
            {
                "id": name,
                "name": name,
                "kind": "tts",
                "type": "/".join(sorted({r.engine for r in replicas if r.engine})) or None,
                "status": summary_status(statuses),
                # Its replicas' ``model`` is the voice they speak when a request names none.
                "default": any(r.kind == "tts_vits" for r in replicas),
                "unloadable": False,
                "replicas": rows,
            }
        )
    return models


def available(state: GatewayState) -> str:
    """Every model id the admin can name, for error messages."""
    names = [m["id"] for m in mesh_asr_models(state)] + [m["id"] for m in tts_models(state)]
    return ", ".join(names) or "none"


def holders(state: GatewayState, model_id: str, chosen: list[str] | None) -> list[ReplicaInfo]:
    """The STT replicas transcribing with ``model_id`` (those of ``chosen`` when given).

    A TTS model is 409 ``not_unloadable``; a model no STT replica transcribes with is
    404 (unknown) or 409 (known, e.g. the speech detector's, but nothing to act on).
    """
    known = state.view.snapshot(include_held=True)
    if any(r.kind in TTS_KINDS and r.model == model_id for r in known):
        raise ModelConflict(
            f"{model_id!r} is a TTS model: TTS replicas load each voice model on first use "
            "and keep it, so it cannot be loaded or unloaded from here",
            code="not_unloadable",
        )
    holding = [r for r in known if r.kind in STT_KINDS and transcribes_with(r, model_id)]
    if not holding:
        if any(same_model(model_id, m["id"]) for m in mesh_asr_models(state)):
            raise ModelConflict(
                f"no STT replica transcribes with {model_id!r} (a bundled model no replica "
                "runs, or the speech detector's, which is not managed here); models that "
                f"can be loaded or unloaded: {', '.join(managed_ids(state)) or 'none'}"
            )
        raise UnknownModel(
            f"no model named {model_id!r} in the mesh; models available: {available(state)}"
        )
    if chosen is None:
        return holding
    by_id = {r.instance_id: r for r in holding}
    unknown = [i for i in chosen if i not in by_id]
    if unknown:
        raise BadRequest(
            f"replica(s) {', '.join(unknown)} do not hold {model_id!r}; replicas that do: "
            + ", ".join(by_id),
            code="unknown_replica",
        )
    return [by_id[i] for i in dict.fromkeys(chosen)]


def managed_ids(state: GatewayState) -> list[str]:
    """Model ids some STT replica transcribes with."""
    known = state.view.snapshot(include_held=True)
    names = {m.name for r in known if r.kind in STT_KINDS and (m := transcribe_model(r))}
    return sorted(names)


def check_not_last(state: GatewayState, model_id: str, targets: list[ReplicaInfo]) -> None:
    """Refuse to leave the mesh without any loaded STT model (unless forced)."""
    leaving = {r.instance_id for r in targets}
    remaining = [
        r
        for r in state.view.snapshot()
        if r.kind in STT_KINDS
        and r.instance_id not in leaving
        and r.healthy
        and not r.draining
        and model_ready(r)
    ]
    if not remaining and any(model_ready(r) for r in targets):
        raise ModelInUse(
            f"{model_id!r} is the last loaded STT model of the mesh: with it unloaded no "
            "replica could transcribe anything. Load another model first, or send "
            '{"force": true} to unload it anyway'
        )


async def call_replica(
    state: GatewayState, replica: ReplicaInfo, action: Action, force: bool
) -> dict[str, Any]:
    """``POST /v1/model/{action}`` on one replica; what it did, or why it did not."""
    url = f"{replica.url}/v1/model/{action}"
    model = transcribe_model(replica)
    row: dict[str, Any] = {
        "instance_id": replica.instance_id,
        "url": replica.url,
        "previous": model.status if model else "loaded",
    }
    try:
        with backend_errors(url, doing="reach"):
            # ``force`` is the unload's alone: the load route refuses unknown fields.
            response = await state.http.post(
                url, json={"force": force} if action == "unload" else {}
            )
        body = response.json()
    except EngineUnavailable as exc:
        return {**row, "status": row["previous"], "error": exc.message, "code": exc.code}
    except ValueError:
        body = None
    if not isinstance(body, dict):
        body = {"error": {"code": "backend_error", "message": f"{url} answered no JSON object"}}
    if response.status_code >= 400 or isinstance(body.get("error"), dict):
        error = body.get("error") or {}
        reason = error.get("message") or f"HTTP {response.status_code}"
        refusal = error.get("code") or "backend_error"
        return {**row, "status": row["previous"], "error": reason, "code": refusal}
    row.update(status=body.get("status"), previous=body.get("previous", row["previous"]))
    if body.get("error"):
        row["error"] = body["error"]
    if "sessions_ended" in body:
        row["sessions_ended"] = body["sessions_ended"]
    return row


async def act(
    request: Request, state: GatewayState, model_id: str, action: Action, body: ModelAction | None
) -> JSONResponse:
    """Load or unload ``model_id`` on its replicas and answer per replica."""
    body = body or ModelAction()
    targets = holders(state, model_id, body.replicas)
    if action == "unload" and not body.force:
        check_not_last(state, model_id, targets)
    rows = await asyncio.gather(*(call_replica(state, r, action, body.force) for r in targets))
    await state.view.refresh()  # each replica published its new status before answering
    answer = {"model": model_id, "action": action, "force": body.force, "replicas": rows}
    state.events.publish("model_" + action, model=model_id, replicas=rows)
    _LOGGER.info("admin %s of %s: %s", action, model_id, rows)
    in_use = [r for r in rows if r.get("code") == ModelInUse.code]
    if in_use:
        state.metrics.error(ModelInUse.code)
        message = "; ".join(f"{r['instance_id']}: {r['error']}" for r in in_use)
        return JSONResponse(
            error_body(ModelInUse.code, message, request.state.request_id, **answer),
            status_code=ModelInUse.status_code,
        )
    if all("code" in r for r in rows):
        state.metrics.error(EngineUnavailable.code)
        message = "no replica could " + action + " the model: "
        message += "; ".join(f"{r['instance_id']}: {r['error']}" for r in rows)
        return JSONResponse(
            error_body(EngineUnavailable.code, message, request.state.request_id, **answer),
            status_code=EngineUnavailable.status_code,
        )
    return JSONResponse(answer)


ActionBody = Annotated[ModelAction | None, Body()]


@router.get("")
async def list_all(state: GatewayStateDep) -> dict[str, Any]:
    """Every ASR and TTS model of the mesh, per-replica status and which is default."""
    asr = [{**m, "kind": "asr", "unloadable": True} for m in mesh_asr_models(state)]
    tts = tts_models(state)
    return {
        "object": "list",
        "models": asr + tts,
        "default": {
            "asr": next((m["id"] for m in asr if m["default"]), None),
            "tts": next((m["id"] for m in tts if m["default"]), None),
        },
    }


@router.post("/{model_id:path}/unload")
async def unload(
    request: Request, model_id: str, state: GatewayStateDep, body: ActionBody = None
) -> JSONResponse:
    """Unload ``model_id`` from the replicas holding it (or those named)."""
    return await act(request, state, model_id, "unload", body)


@router.post("/{model_id:path}/load")
async def load(
    request: Request, model_id: str, state: GatewayStateDep, body: ActionBody = None
) -> JSONResponse:
    """Load ``model_id`` again on the replicas configured with it (in the background)."""
    return await act(request, state, model_id, "load", body)


@router.post("/{model_id:path}/default")
async def set_default(model_id: str, state: GatewayStateDep) -> dict[str, Any]:
    """Make ``model_id`` the ASR model a request that names none goes to first."""
    view = state.view
    check_model(model_id, view.snapshot(include_held=True))  # 404 unknown, 409 none loaded
    previous = view.default_model
    if view.client is not None:
        await view.client.set_default_model(model_id)
    view.set_default_model(model_id)
    _LOGGER.info("default ASR model %s -> %s", previous, model_id)
    state.events.publish("default_model_changed", model=model_id, previous=previous)
    return {"default": model_id, "previous": previous, "shared": view.client is not None}
