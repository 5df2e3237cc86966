"""The specification's ASR REST API: ``POST /v1/asr/transcribe`` and ``GET /v1/asr/models``.

``POST /v1/asr/transcribe`` forwards the upload to an STT replica's ``POST
/v1/transcribe`` through the gateway's one forward-with-failover
(:func:`gateway.proxy.route`), like the OpenAI route: same auth, limits, error shape
and failover. ``model`` narrows the replicas to those that transcribe with it
(:mod:`gateway.asr_models`). The text formats (srt, vtt, txt, lrc) are the replica's
own rendering passed through; ``json`` asks the replica for ``verbose_json`` and
builds the specification's answer from it, with a confidence taken from the
decoder's log-probabilities (:func:`confidence`). ``enable_diarization=true`` and
form fields the route does not take are refused, never ignored.

``WS /v1/asr/stream`` is the streaming socket of ``/ws/transcribe`` at another path
(:mod:`gateway.app`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from typing import Annotated, Any, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, Response

from gateway.asr_models import check_model, list_models, narrow, transcribe_model
from gateway.deps import GatewayStateDep
from gateway.proxy import (
    BackendCall,
    Choose,
    Routed,
    refuse_unknown_form_fields,
    request_record,
    respond,
    route,
    served_by_headers,
)
from gateway.routing import choose_backends
from gateway.state import GatewayState
from gateway.transcriptions import BACKEND_PATH, PASSED_HEADERS, read_upload
from voicemesh.errors import EngineUnavailable, FeatureUnavailable
from voicemesh.registry import ReplicaInfo

router = APIRouter()

AsrFormat = Literal["json", "srt", "vtt", "txt", "lrc"]
FIELDS = ("audio", "model", "language", "response_format", "enable_diarization")
"""Every form field ``POST /v1/asr/transcribe`` takes; any other is refused."""
BACKEND_FORMAT = {"json": "verbose_json", "txt": "text", "srt": "srt", "vtt": "vtt", "lrc": "lrc"}
"""The STT service's ``response_format`` for each of this route's formats."""


def segment_confidence(avg_logprob: float | None) -> float | None:
    """exp(avg_logprob): the geometric mean of the segment's token probabilities."""
    if avg_logprob is None:
        return None
    return round(min(1.0, math.exp(avg_logprob)), 4)


def confidence(segments: Iterable[dict[str, Any]]) -> float | None:
    """exp of the duration-weighted mean ``avg_logprob`` of the segments (None without any).

    A segment shorter than 10 ms weighs as 10 ms, so a zero-length one still counts.
    """
    total = weight = 0.0
    for segment in segments:
        logprob = segment.get("avg_logprob")
        if logprob is None:
            continue
        span = max(float(segment["end"]) - float(segment["start"]), 0.01)
        total += span * float(logprob)
        weight += span
    return segment_confidence(total / weight) if weight else None


def header_float(routed: Routed, name: str) -> float | None:
    """A number the replica sent in a header, or None."""
    try:
        return float(routed.response.headers[name])
    except (KeyError, ValueError):
        return None


def asr_answer(
    verbose: dict[str, Any], routed: Routed, *, processing_ms: float, response_format: str
) -> dict[str, Any]:
    """The specification's JSON answer from the replica's ``verbose_json``."""
    replica = routed.replica
    served = transcribe_model(replica)
    raw_segments = verbose.get("segments") or []
    engine = routed.response.headers.get("x-voicemesh-engine") or replica.engine
    return {
        "success": True,
        "text": verbose.get("text", ""),
        "model": served.name if served else replica.model,
        "confidence": confidence(raw_segments),
        "duration_seconds": verbose.get("duration"),
        "processing_time_ms": processing_ms,
        "language": verbose.get("language"),
        "format": response_format,
        "segments": [
            {
                "text": str(s.get("text", "")).strip(),
                "start_time": s.get("start"),
                "end_time": s.get("end"),
                "confidence": segment_confidence(s.get("avg_logprob")),
            }
            for s in raw_segments
        ],
        "metadata": {
            "model_load_time_ms": served.load_ms if served else None,
            "rtf": header_float(routed, "x-voicemesh-rtf"),
            "engine": engine,
            "device": replica.device,
            "backend": replica.url,
            "failovers": routed.failovers,
        },
    }


def model_choice(state: GatewayState, model: str | None) -> Choose:
    """The routing function for ``model`` (every transcribing replica when None)."""
    settings = state.settings
    mode = state.view.mode
    if model:
        check_model(model, state.view.snapshot(include_held=True))

    def choose(replicas: list[ReplicaInfo]) -> list[ReplicaInfo]:
        ordered = choose_backends(
            mode, replicas, capability="transcribe", gpu_max_load=settings.gpu_max_load
        )
        return narrow(ordered, model, state.view.default_model)

    return choose


@router.post("/v1/asr/transcribe", response_model=None)
async def asr_transcribe(
    request: Request,
    state: GatewayStateDep,
    *,
    audio: Annotated[UploadFile, File(description="wav, mp3, m4a, flac, ogg, webm, ...")],
    model: Annotated[str | None, Form(description="an id of GET /v1/asr/models")] = None,
    language: Annotated[str | None, Form(description="ISO 639-1 code; detected if unset")] = None,
    response_format: Annotated[AsrFormat, Form()] = "json",
    enable_diarization: Annotated[bool, Form(description="not available: true is a 422")] = False,
) -> Response:
    """Transcribe one file on a replica that holds ``model``, failing over like every route."""
    started = time.perf_counter()
    await refuse_unknown_form_fields(request, FIELDS)
    if enable_diarization:
        raise FeatureUnavailable(
            "speaker diarization (enable_diarization=true) is not available: no engine of "
            "this mesh separates speakers; send enable_diarization=false or leave it out"
        )
    request_id: str = request.state.request_id
    async with request_record(
        state, "transcription", request_id, api="asr", model=model, response_format=response_format
    ) as record:
        choose = model_choice(state, model)
        data = await read_upload(request, audio, state.settings.max_upload_bytes)
        fields = {"response_format": BACKEND_FORMAT[response_format]}
        if language and language.strip():
            fields["language"] = language.strip()
        content_type = audio.content_type or "application/octet-stream"
        files = {"file": (audio.filename or "audio", data, content_type)}
        call = BackendCall("POST", BACKEND_PATH, request_id, files=files, data=fields)
        routed = await route(state, call, choose, service="STT", kind="transcription")
        record.served(routed)
        served = transcribe_model(routed.replica)
        model_header = {"X-VoiceMesh-Model": served.name} if served else {}
        if response_format != "json" or routed.response.status_code != 200:
            return await respond(routed, PASSED_HEADERS, model_header)
        try:
            verbose = json.loads(await routed.response.aread())
        except ValueError as exc:
            raise EngineUnavailable(
                f"{routed.replica.url} sent a transcript that is not JSON", code="backend_error"
            ) from exc
        finally:
            await routed.aclose()
        processing_ms = round((time.perf_counter() - started) * 1000, 1)
        body = asr_answer(
            verbose, routed, processing_ms=processing_ms, response_format=response_format
        )
        headers = {**served_by_headers(routed, PASSED_HEADERS), **model_header}
        headers.pop("content-type", None)
        return JSONResponse(body, headers=headers)


def mesh_asr_models(state: GatewayState) -> list[dict[str, Any]]:
    """Every ASR model of the mesh as ``GET /v1/asr/models`` lists it (Wyoming's too)."""
    view = state.view
    known = view.snapshot(include_held=True)
    routable = {r.instance_id for r in view.snapshot()}
    held = {r.instance_id for r in known} - routable
    default_route = model_choice(state, None)(view.snapshot())
    return list_models(known, held, default_route, view.default_model)


@router.get("/v1/asr/models")
async def asr_models(state: GatewayStateDep) -> dict[str, Any]:
    """Every ASR model of the mesh: status per replica, capabilities, measured performance."""
    models = mesh_asr_models(state)
    default = next((m["id"] for m in models if m["default"]), None)
    return {"object": "list", "models": models, "default": default}
