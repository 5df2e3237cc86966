"""The specification's TTS API on the gateway, over ``tts_vits`` (``tts_clone`` for a cloned voice).

* ``POST /v1/tts/synthesize``: speak a text in a voice named by id or by a model's speaker
  index; the audio, or with ``format: "json"`` a description and an ``audio_url``;
* ``GET /v1/tts/audio/{token}``: that audio, for the key that made it, for a few minutes
  (:mod:`gateway.tts_audio`);
* ``GET /v1/tts/voices``, ``/v1/tts/voices/{id}``, ``/v1/tts/samples/{id}.wav``: the
  catalogue (filters, pages, moods, measured RTF, sample URLs) and a voice's sample;
* ``POST /v1/tts/compare``: candidates measured, with a recommendation and its reason.

Bodies are validated here, so a field nobody defined is a 422 naming it before anything
is routed; the answers are ``tts_vits``'s with what the specification adds. Routing and
failover are :mod:`gateway.tts`'s (:func:`gateway.tts.tts_choice`) through the gateway's
one :func:`gateway.proxy.route`.
"""

from __future__ import annotations

import base64
import json
import time
import urllib.parse
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response

from gateway.clone import TTS_CLONE, is_profile_id, owner_headers, owner_id
from gateway.deps import GatewayStateDep
from gateway.proxy import (
    TTS_HEADERS,
    BackendCall,
    Routed,
    request_record,
    respond,
    route,
    served_by_headers,
)
from gateway.state import GatewayState
from gateway.tts import TTS_VITS, forward_tts, tts_choice
from gateway.tts_audio import AUDIO_PATH
from voicemesh.errors import BadRequest, EngineUnavailable, FeatureUnavailable
from voicemesh.tts.catalogue import Gender
from voicemesh.tts.encoding import MEDIA_TYPES, AudioFormat
from voicemesh.tts.protocol import CompareRequest, SynthesizeRequest

router = APIRouter()

SynthesizeFormat = Literal["wav", "pcm", "flac", "mp3", "opus", "json"]


class TtsSynthesizeBody(SynthesizeRequest):
    """``POST /v1/tts/synthesize``: ``tts_vits``'s body, plus ``format: "json"``.

    Any field it does not define is refused (422 ``unknown_field``).
    """

    # Wider than the service's formats on purpose: "json" is the gateway's own answer.
    format: SynthesizeFormat = "wav"  # type: ignore[assignment]
    """An audio format, or ``json``: the answer describes the audio and links to it."""
    audio_format: AudioFormat = "wav"
    """With ``format: "json"``: the format of the file behind ``audio_url``."""


BITS_PER_SAMPLE: dict[str, int | None] = {
    "wav": 16,
    "pcm": 16,
    "flac": 16,
    "mp3": None,
    "opus": None,
}
"""Bits per sample of each format (none for the lossy ones: they carry no fixed depth)."""


def header_number(routed: Routed, name: str) -> float | None:
    """A number a TTS replica sent in a header, or None."""
    try:
        return float(routed.response.headers[name])
    except (KeyError, ValueError):
        return None


def synthesis_call(request: Request, body: TtsSynthesizeBody) -> tuple[BackendCall, str]:
    """The backend call for ``body`` and the service kind that takes it.

    A catalogue voice goes to ``tts_vits`` as it is; a cloned voice (a profile id) to
    ``tts_clone`` in its own body, with the caller's key identity.
    """
    fmt = body.audio_format if body.format == "json" else body.format
    if body.format == "json" and body.stream:
        raise BadRequest("format 'json' cannot stream; leave stream out", code="bad_request")
    ref = body.voice_ref()
    request_id: str = request.state.request_id
    if isinstance(ref, str) and is_profile_id(ref):
        if body.model is not None or body.volume_db != 0:
            raise FeatureUnavailable(
                "a cloned voice takes no model and no volume_db; leave them out",
                code="feature_unavailable",
            )
        payload: dict[str, Any] = {
            "text": body.text,
            "voice_id": ref,
            "speed": body.speed,
            "format": fmt,
            "sample_rate": body.sample_rate,
            "stream": body.stream,
        }
        call = BackendCall(
            "POST",
            "/v1/synthesize",
            request_id,
            json=payload,
            stream=body.stream,
            headers=owner_headers(request),
        )
        return call, TTS_CLONE
    payload = body.model_dump(exclude={"audio_format"}, exclude_none=True) | {"format": fmt}
    return BackendCall("POST", "/v1/synthesize", request_id, json=payload, stream=body.stream), (
        TTS_VITS
    )


def synthesis_answer(
    routed: Routed, body: TtsSynthesizeBody, *, audio_url: str, expires_at: float, started: float
) -> dict[str, Any]:
    """The specification's JSON answer for audio a replica made (kept behind ``audio_url``)."""
    headers = routed.response.headers
    rate = header_number(routed, "x-voicemesh-sample-rate")
    ref = body.voice_ref()
    voice = headers.get("x-voicemesh-voice")
    name = headers.get("x-voicemesh-voice-name")
    speaker = header_number(routed, "x-voicemesh-speaker-id")
    return {
        "success": True,
        "audio_url": audio_url,
        "expires_at": round(expires_at, 3),
        "model": headers.get("x-voicemesh-model"),
        "voice_id": ref if ref is not None else voice,
        "voice": voice,
        "voice_name": urllib.parse.unquote(name) if name else None,
        "speaker_id": int(speaker) if speaker is not None else None,
        "duration_seconds": header_number(routed, "x-voicemesh-duration"),
        "processing_time_ms": round((time.perf_counter() - started) * 1000, 1),
        "metadata": {
            "rtf": header_number(routed, "x-voicemesh-rtf"),
            "sample_rate": int(rate) if rate is not None else None,
            "channels": 1,
            "bits_per_sample": BITS_PER_SAMPLE[body.audio_format],
            "format": body.audio_format,
            "engine": headers.get("x-voicemesh-engine"),
            "backend": routed.replica.url,
            "failovers": routed.failovers,
        },
    }


async def read_routed(routed: Routed) -> bytes:
    """The whole body of a backend's answer (the connection released after)."""
    try:
        return await routed.response.aread()
    finally:
        await routed.aclose()


def routed_json(data: bytes, routed: Routed) -> dict[str, Any]:
    """A backend's JSON object answer, or EngineUnavailable when it sent something else."""
    try:
        body = json.loads(data)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise EngineUnavailable(
            f"{routed.replica.url} sent an answer that is not a JSON object", code="backend_error"
        )
    return body


@router.post("/v1/tts/synthesize", response_model=None)
async def synthesize(request: Request, body: TtsSynthesizeBody, state: GatewayStateDep) -> Response:
    """Speak ``text`` in a catalogue voice (by id, or model and speaker index) or a cloned one.

    An audio ``format`` answers with the audio (streamed through when ``stream`` is
    true); ``json`` answers with a description and an ``audio_url`` for this key only.
    """
    started = time.perf_counter()
    call, kind = synthesis_call(request, body)
    request_id: str = request.state.request_id
    voice = body.voice_ref()
    async with request_record(
        state, "tts_synthesize", request_id, api="tts", voice=voice, format=body.format
    ) as record:
        routed = await route(state, call, tts_choice(kind, "synthesize"), service=kind, kind="tts")
        record.served(routed)
        if body.format != "json" or routed.response.status_code != 200:
            return await respond(routed, TTS_HEADERS)
        data = await read_routed(routed)
        audio_url, expires_at = state.tts_audio.put(
            data,
            media_type=routed.response.headers.get("content-type", "application/octet-stream"),
            owner=owner_id(request),
            fmt=body.audio_format,
        )
        answer = synthesis_answer(
            routed, body, audio_url=audio_url, expires_at=expires_at, started=started
        )
        headers = served_by_headers(routed, TTS_HEADERS)
        headers.pop("content-type", None)
        return JSONResponse(answer, headers=headers)


@router.get(AUDIO_PATH + "/{token}", response_model=None)
async def get_audio(request: Request, token: str, state: GatewayStateDep) -> Response:
    """Audio a synthesis or a compare made, for the key that asked for it."""
    stored = state.tts_audio.get(token, owner_id(request))
    remaining = max(0, int(stored.expires_at - time.time()))
    return Response(
        stored.data,
        media_type=stored.media_type,
        headers={"Cache-Control": f"private, max-age={remaining}"},
    )


def sample_url(voice_id: str) -> str:
    """Where the gateway serves a voice's spoken sample."""
    return f"/v1/tts/samples/{urllib.parse.quote(voice_id, safe=':')}.wav"


def with_sample_url(voice: dict[str, Any]) -> dict[str, Any]:
    """A voice of ``tts_vits``'s answer with its ``sample_url`` (None when not installed)."""
    installed = voice.get("installed") is not False
    return {**voice, "sample_url": sample_url(str(voice["id"])) if installed else None}


async def voices_call(
    state: GatewayState, what: str, call: BackendCall
) -> tuple[Routed, dict[str, Any] | None]:
    """Route a ``GET`` of the catalogue; the answer's JSON when it is a 200, else None."""
    async with request_record(state, what, call.request_id, api="tts") as record:
        routed = await route(
            state, call, tts_choice(TTS_VITS, "voices"), service=TTS_VITS, kind="tts"
        )
        record.served(routed)
    if routed.response.status_code != 200:
        return routed, None
    return routed, routed_json(await read_routed(routed), routed)


def json_answer(routed: Routed, body: dict[str, Any]) -> JSONResponse:
    """``body`` with the headers naming who served it."""
    headers = served_by_headers(routed, TTS_HEADERS)
    headers.pop("content-type", None)
    return JSONResponse(body, headers=headers)


@router.get("/v1/tts/voices", response_model=None)
async def list_voices(
    request: Request,
    state: GatewayStateDep,
    *,
    model: Annotated[str | None, Query(description="a catalogue model id")] = None,
    gender: Gender | None = None,
    mood: Annotated[str | None, Query(description="calm, warm, cheerful, serious...")] = None,
    language: Annotated[str | None, Query(description="en matches en-US and en-GB")] = None,
    page: Annotated[int | None, Query(ge=1)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> Response:
    """The voice catalogue, filtered and paged, each voice with its moods, measured RTF and
    sample URL (``tag``, ``installed`` and ``offset`` filter and page as well)."""
    params = dict(request.query_params)
    call = BackendCall("GET", "/v1/voices", request.state.request_id, params=params)
    routed, body = await voices_call(state, "tts_voices", call)
    if body is None:
        return await respond(routed, TTS_HEADERS)
    total = int(body.get("total", 0))
    offset = int(body.get("offset", 0))
    filters = {
        "model": model,
        "gender": gender,
        "mood": mood,
        "language": language,
        "tag": params.get("tag"),
        "installed": params.get("installed"),
    }
    answer = {
        **body,
        "voices": [with_sample_url(v) for v in body.get("voices", [])],
        "pagination": {
            "page": page if page is not None else offset // limit + 1,
            "limit": limit,
            "total": total,
            "total_pages": -(-total // limit),
        },
        "filters_applied": {k: v for k, v in filters.items() if v is not None},
    }
    return json_answer(routed, answer)


IndexModel = Annotated[str | None, Query(description="the model of a bare speaker index")]
"""``?model=`` of the one-voice routes: whose speaker a bare index (``/77``) is."""


def voice_path(voice_id: str, suffix: str = "") -> str:
    """``tts_vits``'s path for one voice (an id, ``<model>:<index>`` or an index)."""
    return f"/v1/voices/{urllib.parse.quote(voice_id, safe=':')}{suffix}"


@router.get("/v1/tts/voices/{voice_id}", response_model=None)
async def get_voice(
    request: Request, voice_id: str, state: GatewayStateDep, model: IndexModel = None
) -> Response:
    """One voice, by id, by ``<model>:<index>``, or by speaker index with ``model``."""
    params = dict(request.query_params)
    call = BackendCall("GET", voice_path(voice_id), request.state.request_id, params=params)
    del model  # passed on in params; declared for the documentation
    routed, body = await voices_call(state, "tts_voices", call)
    if body is None:
        return await respond(routed, TTS_HEADERS)
    return json_answer(routed, with_sample_url(body))


@router.get("/v1/tts/samples/{voice_id}.wav", response_model=None)
async def get_sample(
    request: Request, voice_id: str, state: GatewayStateDep, model: IndexModel = None
) -> Response:
    """A WAV of the voice introducing itself (made on first request, then cached)."""
    params = {"model": model} if model else None
    call = BackendCall(
        "GET", voice_path(voice_id, "/sample.wav"), request.state.request_id, params=params
    )
    return await forward_tts(state, "tts_voices", call, voice=voice_id, capability="voices")


def compare_results(
    request: Request, state: GatewayState, body: dict[str, Any], fmt: AudioFormat
) -> list[dict[str, Any]]:
    """The specification's ``results``: each candidate's audio kept behind an ``audio_url``."""
    best = (body.get("recommendation") or {}).get("index")
    owner = owner_id(request)
    results = []
    for candidate in body.get("candidates", []):
        audio = base64.b64decode(candidate.get("audio_base64", ""))
        url, expires_at = state.tts_audio.put(
            audio, media_type=MEDIA_TYPES[fmt], owner=owner, fmt=fmt
        )
        results.append(
            {
                "voice_id": candidate.get("voice_id"),
                "voice": candidate.get("voice"),
                "voice_name": candidate.get("voice_name"),
                "model": candidate.get("model"),
                "speed": candidate.get("speed"),
                "audio_url": url,
                "expires_at": round(expires_at, 3),
                "metrics": {
                    "rtf": candidate.get("rtf"),
                    "latency_ms": candidate.get("latency_ms"),
                    "duration_seconds": candidate.get("duration_s"),
                },
                "preferred": candidate.get("index") == best,
            }
        )
    return results


@router.post("/v1/tts/compare", response_model=None)
async def compare(request: Request, body: CompareRequest, state: GatewayStateDep) -> Response:
    """Several voices on one text, measured, with a recommendation that states its reason."""
    payload = body.model_dump(exclude_none=True)
    call = BackendCall("POST", "/v1/compare", request.state.request_id, json=payload)
    async with request_record(state, "tts_compare", call.request_id, api="tts") as record:
        routed = await route(
            state, call, tts_choice(TTS_VITS, "compare"), service=TTS_VITS, kind="tts"
        )
        record.served(routed)
        if routed.response.status_code != 200:
            return await respond(routed, TTS_HEADERS)
        answer = routed_json(await read_routed(routed), routed)
    answer["results"] = compare_results(request, state, answer, body.format)
    return json_answer(routed, answer)
