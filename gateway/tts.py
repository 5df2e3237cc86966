"""Text-to-speech through the gateway: the OpenAI speech route and the mesh's own TTS routes.

* ``POST /v1/audio/speech`` — OpenAI's API (model, input, voice, response_format, speed);
  the audio streams back as the backend makes it, sentence by sentence.
* ``GET /v1/tts/voices`` (and ``/v1/tts/voices/{id}``), ``POST /v1/tts/synthesize``,
  ``POST /v1/tts/compare`` — the ``tts_vits`` API passed through.

Which service serves a voice is decided in one place, :func:`backend_kind_for_voice`.
Replicas of that kind are tried least loaded first (:func:`gateway.routing.choose_service`);
one that cannot be reached, times out or answers 5xx (``busy`` included) is skipped and
the same request goes to the next; a 4xx is the caller's mistake and comes back as it
is. Responses carry ``X-VoiceMesh-Engine``, ``X-VoiceMesh-Voice`` and
``X-VoiceMesh-Backend`` (plus ``X-VoiceMesh-Failover`` when it took more than one try).

OpenAI voice names map to catalogue voices by :data:`OPENAI_VOICES`: each name lists
voices in order of preference (a Kokoro speaker of a similar character first) and the
first one installed on the mesh is used; with only the bundled voice installed every
name speaks as ``en_US-joe-medium``. Any other ``voice`` is taken as a catalogue id.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from fastapi import APIRouter, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from gateway.routing import choose_service
from gateway.state import GatewayState
from gateway.transcriptions import _count_failover, _error_message
from voicemesh.errors import (
    BackendClosed,
    BackendTimeout,
    BadRequest,
    EngineUnavailable,
    VoiceMeshError,
)
from voicemesh.registry import ReplicaInfo
from voicemesh.tts.protocol import MAX_SPEED, MIN_SPEED

_LOGGER = logging.getLogger(__name__)

router = APIRouter()

TTS_VITS = "tts_vits"
DEFAULT_VOICE = "en_US-joe-medium"
OPENAI_PCM_RATE = 24000
"""OpenAI's ``pcm`` format is 24 kHz 16-bit mono; so is ours on this route."""
VOICE_CACHE_S = 30.0

OPENAI_VOICES: dict[str, tuple[str, ...]] = {
    "alloy": ("kokoro-af", DEFAULT_VOICE),
    "ash": ("kokoro-bm_george", DEFAULT_VOICE),
    "ballad": ("kokoro-bf_emma", DEFAULT_VOICE),
    "coral": ("kokoro-af_sarah", "matcha-ljspeech", DEFAULT_VOICE),
    "echo": ("kokoro-am_michael", DEFAULT_VOICE),
    "fable": ("kokoro-bm_lewis", DEFAULT_VOICE),
    "onyx": ("kokoro-am_adam", DEFAULT_VOICE),
    "nova": ("kokoro-af_bella", "matcha-ljspeech", DEFAULT_VOICE),
    "sage": ("kokoro-bf_isabella", DEFAULT_VOICE),
    "shimmer": ("kokoro-af_nicole", "matcha-ljspeech", DEFAULT_VOICE),
    "verse": ("kokoro-af_sky", DEFAULT_VOICE),
}
"""OpenAI voice name -> catalogue voices in order of preference (first installed wins)."""

_PASSED_HEADERS = ("content-type", "x-voicemesh-engine", "x-voicemesh-voice",
                   "x-voicemesh-model", "x-voicemesh-sample-rate", "x-voicemesh-format",
                   "x-voicemesh-duration", "x-voicemesh-synthesis-time", "x-voicemesh-rtf",
                   "x-voicemesh-stream", "x-voicemesh-cache", "x-voicemesh-approximate",
                   "x-voicemesh-fallback")


class OpenAISpeechRequest(BaseModel):
    """OpenAI's ``POST /v1/audio/speech`` body."""

    model: str = "tts-1"
    """Any name (tts-1, tts-1-hd, gpt-4o-mini-tts, ...); the routed voice decides."""
    input: str
    voice: str | dict[str, Any] = "alloy"
    """An OpenAI voice name (mapped, see OPENAI_VOICES) or a catalogue voice id."""
    response_format: Literal["mp3", "opus", "aac", "flac", "wav", "pcm"] = "mp3"
    speed: float = Field(1.0, ge=0.25, le=4.0)
    instructions: str | None = None
    """Accepted and ignored (VITS voices take no style prompt)."""
    stream_format: Literal["audio", "sse"] | None = None


async def backend_kind_for_voice(state: GatewayState, voice: str | None) -> str:
    """The service kind that serves ``voice``: cloned-voice profile ids go to ``tts_clone``,
    every catalogue voice to ``tts_vits``.
    """
    from gateway.clone import TTS_CLONE, is_profile_id

    del state
    return TTS_CLONE if voice is not None and is_profile_id(voice) else TTS_VITS


@dataclass
class BackendCall:
    """One request to send to a TTS replica (the same bytes to each replica tried)."""

    method: str
    path: str
    request_id: str
    json: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    stream: bool = False
    headers: dict[str, str] | None = None
    """Extra headers (e.g. the caller's key identity for ``tts_clone``)."""
    files: dict[str, tuple[str, bytes, str]] | None = None
    """Multipart files (the form fields go in ``data``)."""
    data: dict[str, str] | None = None


async def _send(client: httpx.AsyncClient, replica: ReplicaInfo,
                call: BackendCall) -> httpx.Response:
    """Send ``call`` to ``replica``; EngineUnavailable when it cannot serve (fail over)."""
    url = f"{replica.url}{call.path}"
    request = client.build_request(call.method, url, json=call.json, params=call.params,
                                   files=call.files, data=call.data,
                                   headers={**(call.headers or {}),
                                            "X-Request-ID": call.request_id})
    try:
        response = await client.send(request, stream=call.stream)
    except httpx.TimeoutException as exc:
        raise BackendTimeout(f"{url} timed out: {exc!r}") from exc
    except httpx.TransportError as exc:
        raise BackendClosed(f"cannot reach {url}: {exc!r}") from exc
    if response.status_code >= 500:
        await response.aread()
        await response.aclose()
        code = "busy" if _error_code(response) == "busy" else "backend_error"
        raise EngineUnavailable(
            f"{url} answered {response.status_code}: {_error_message(response)}", code=code)
    return response


def _error_code(response: httpx.Response) -> str | None:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return None


@dataclass
class Routed:
    """A backend's response and who gave it."""

    response: httpx.Response
    replica: ReplicaInfo
    failovers: int
    client: httpx.AsyncClient


async def route(state: GatewayState, kind: str, call: BackendCall, *, capability: str) -> Routed:
    """Send ``call`` to the least-loaded replica of ``kind``, failing over on 'unavailable'."""
    settings = state.settings
    candidates = state.view.route(
        lambda replicas: choose_service(kind, replicas, capability=capability))
    timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
    client = httpx.AsyncClient(timeout=timeout)
    last_error = f"no {kind} replica is registered"
    failovers = 0
    try:
        for index, replica in enumerate(candidates):
            state.view.assign(replica)
            try:
                response = await _send(client, replica, call)
            except EngineUnavailable as exc:
                last_error = exc.message
                if exc.code != "busy":  # a busy replica is alive: keep it in routing
                    state.view.mark_failed(replica)
                _LOGGER.warning("request %s: %s failed: %s: %s", call.request_id, replica.url,
                                exc.code, exc.message)
                if index + 1 < len(candidates):
                    failovers += 1
                    _count_failover(state, call.request_id, replica, candidates[index + 1], exc,
                                    kind="tts")
                continue
            finally:
                state.view.release(replica)
            return Routed(response, replica, failovers, client)
    except BaseException:
        await client.aclose()
        raise
    await client.aclose()
    raise EngineUnavailable(f"no {kind} backend could serve the request: {last_error}",
                            code="no_backend")


def _headers(routed: Routed) -> dict[str, str]:
    """Headers for the client: the backend's own plus who served it."""
    headers = {k: v for k, v in routed.response.headers.items() if k.lower() in _PASSED_HEADERS}
    headers["X-VoiceMesh-Backend"] = routed.replica.url
    if routed.failovers:
        headers["X-VoiceMesh-Failover"] = str(routed.failovers)
    return headers


async def _respond(routed: Routed) -> Response:
    """The backend's answer as the client's; streamed through when the backend streams."""
    response = routed.response
    headers = _headers(routed)
    media = headers.pop("content-type", None)
    if not response.is_stream_consumed and response.headers.get("x-voicemesh-stream"):
        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in response.aiter_raw():
                    yield chunk
            finally:
                await response.aclose()
                await routed.client.aclose()

        return StreamingResponse(body(), status_code=response.status_code, headers=headers,
                                 media_type=media)
    try:
        content = await response.aread()
    finally:
        await response.aclose()
        await routed.client.aclose()
    return Response(content, status_code=response.status_code, headers=headers,
                    media_type=media)


async def _forward(request: Request, what: str, call: BackendCall, *, voice: str | None,
                   capability: str, kind: str | None = None) -> Response:
    """Route one TTS call and account for it (stats, metrics, events, log).

    The service is ``kind`` when given, else the one that serves ``voice``.
    """
    state: GatewayState = request.app.state.gateway
    started = time.perf_counter()
    status_code = 500
    routed: Routed | None = None
    try:
        kind = kind or await backend_kind_for_voice(state, voice)
        routed = await route(state, kind, call, capability=capability)
        status_code = routed.response.status_code
        return await _respond(routed)
    except VoiceMeshError as exc:
        status_code = exc.status_code
        raise
    finally:
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        backend = routed.replica.url if routed else None
        state.record_request(what, status=status_code, latency_ms=latency_ms,
                             request_id=call.request_id, voice=voice, backend=backend,
                             failovers=routed.failovers if routed else 0)
        _LOGGER.info("request %s: %s %s via %s in %.0f ms", call.request_id, what, status_code,
                     backend, latency_ms)


async def installed_voices(request: Request) -> set[str]:
    """Voice ids installed on the TTS service (cached for a few seconds; empty if unknown)."""
    cache: dict[str, Any] | None = getattr(request.app.state, "tts_voice_cache", None)
    if cache is None:
        cache = {"at": 0.0, "ids": set()}
        request.app.state.tts_voice_cache = cache
    if time.monotonic() - cache["at"] < VOICE_CACHE_S and cache["ids"]:
        return set(cache["ids"])
    state: GatewayState = request.app.state.gateway
    call = BackendCall("GET", "/v1/voices", request.state.request_id,
                       params={"installed": "true", "limit": "500"})
    try:
        routed = await route(state, TTS_VITS, call, capability="voices")
    except EngineUnavailable:
        return set()
    try:
        body = routed.response.json() if routed.response.status_code == 200 else {}
    finally:
        await routed.response.aclose()
        await routed.client.aclose()
    ids = {str(v["id"]) for v in body.get("voices", []) if isinstance(v, dict) and "id" in v}
    cache.update(at=time.monotonic(), ids=ids)
    return ids


def map_openai_voice(name: str, installed: set[str]) -> str:
    """The catalogue voice for an OpenAI voice name (or the name itself when it is not one)."""
    choices = OPENAI_VOICES.get(name.lower())
    if choices is None:
        return name
    for voice in choices:
        if voice in installed:
            return voice
    return choices[-1]


@router.post("/v1/audio/speech", response_model=None)
async def create_speech(request: Request, body: OpenAISpeechRequest) -> Response:
    """Speak ``input`` the way OpenAI's speech API does; the audio streams as it is made."""
    if body.response_format == "aac":
        raise BadRequest("response_format 'aac' is not supported here; use mp3, opus, flac, "
                         "wav or pcm", code="unsupported_format")
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise BadRequest(f"speed must be between {MIN_SPEED} and {MAX_SPEED} on this server, "
                         f"got {body.speed}", code="bad_speed")
    if body.stream_format == "sse":
        raise BadRequest("stream_format 'sse' is not supported; use 'audio'",
                         code="unsupported_format")
    requested = body.voice.get("id", "") if isinstance(body.voice, dict) else body.voice
    if not isinstance(requested, str) or not requested:
        raise BadRequest("voice must be a voice name or id", code="bad_voice")
    from gateway.clone import is_profile_id, speech_call

    if is_profile_id(requested):
        # A cloned voice: tts_clone speaks it, for the caller's key only.
        return await _forward(request, "speech", speech_call(request, body, OPENAI_PCM_RATE),
                              voice=requested, capability="synthesize")
    voice = requested
    if requested.lower() in OPENAI_VOICES:
        voice = map_openai_voice(requested, await installed_voices(request))
    payload: dict[str, Any] = {
        "text": body.input, "voice": voice, "speed": body.speed,
        "format": body.response_format, "stream": True,
    }
    if body.response_format == "pcm":
        payload["sample_rate"] = OPENAI_PCM_RATE
    call = BackendCall("POST", "/v1/synthesize", request.state.request_id, json=payload,
                       stream=True)
    return await _forward(request, "speech", call, voice=voice, capability="synthesize")


@router.get("/v1/tts/voices", response_model=None)
async def list_voices(request: Request) -> Response:
    """The voice catalogue (filters and pagination as ``tts_vits``'s ``GET /v1/voices``)."""
    call = BackendCall("GET", "/v1/voices", request.state.request_id,
                       params=dict(request.query_params))
    return await _forward(request, "tts_voices", call, voice=None, capability="voices")


@router.get("/v1/tts/voices/{voice_id}", response_model=None)
async def get_voice(request: Request, voice_id: str) -> Response:
    """One voice with a spoken sample."""
    call = BackendCall("GET", f"/v1/voices/{voice_id}", request.state.request_id,
                       params=dict(request.query_params))
    return await _forward(request, "tts_voices", call, voice=voice_id, capability="voices")


async def _json_body(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError as exc:
        raise BadRequest("the body must be a JSON object", code="bad_json") from exc
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="bad_json")
    return body


@router.post("/v1/tts/synthesize", response_model=None)
async def synthesize(request: Request) -> Response:
    """``tts_vits``'s ``POST /v1/synthesize`` (streamed through when ``stream`` is true)."""
    body = await _json_body(request)
    voice = body.get("voice") if isinstance(body.get("voice"), str) else None
    call = BackendCall("POST", "/v1/synthesize", request.state.request_id, json=body,
                       stream=bool(body.get("stream")))
    return await _forward(request, "tts_synthesize", call, voice=voice, capability="synthesize")


@router.post("/v1/tts/compare", response_model=None)
async def compare(request: Request) -> Response:
    """``tts_vits``'s ``POST /v1/compare``: several voices on one text, with a recommendation."""
    body = await _json_body(request)
    call = BackendCall("POST", "/v1/compare", request.state.request_id, json=body)
    return await _forward(request, "tts_compare", call, voice=None, capability="compare")
