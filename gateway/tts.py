"""Text-to-speech through the gateway: the OpenAI speech route and the mesh's own TTS routes.

* ``POST /v1/audio/speech`` — OpenAI's API (model, input, voice, response_format, speed);
  the audio streams back as the backend makes it, sentence by sentence.
* ``/v1/tts/*`` — the specification's TTS API, in :mod:`gateway.tts_api` over the
  helpers here.

Which service serves a voice is decided in one place, :func:`backend_kind_for_voice`.
Replicas of that kind are tried least loaded first (:func:`gateway.routing.choose_service`)
by the gateway's one forward-with-failover (:func:`gateway.proxy.forward`): one that
cannot be reached, times out or answers 5xx (``busy`` included) is skipped and
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
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field

from gateway.clone import TTS_CLONE, is_profile_id, owner_headers
from gateway.deps import GatewayStateDep
from gateway.proxy import (
    TTS_HEADERS,
    BackendCall,
    Choose,
    forward,
    route,
)
from gateway.routing import choose_service
from gateway.state import GatewayState
from voicemesh.errors import BadRequest, EngineUnavailable
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
    del state
    return TTS_CLONE if voice is not None and is_profile_id(voice) else TTS_VITS


def tts_choice(kind: str, capability: str) -> Choose:
    """The routing function for a TTS call: replicas of ``kind``, least loaded first."""
    return lambda replicas: choose_service(kind, replicas, capability=capability)


async def forward_tts(
    state: GatewayState,
    what: str,
    call: BackendCall,
    *,
    voice: str | None,
    capability: str,
    kind: str | None = None,
) -> Response:
    """Route one TTS call (with failover) and account for it.

    The service is ``kind`` when given, else the one that serves ``voice``.
    """
    kind = kind or await backend_kind_for_voice(state, voice)
    return await forward(
        state,
        what,
        call,
        tts_choice(kind, capability),
        service=kind,
        kind="tts",
        passed=TTS_HEADERS,
        voice=voice,
    )


async def installed_voices(state: GatewayState, request_id: str) -> set[str]:
    """Voice ids installed on the TTS service (cached for a few seconds; empty if unknown)."""
    read_at, cached = state.tts_voices
    if time.monotonic() - read_at < VOICE_CACHE_S and cached:
        return set(cached)
    call = BackendCall(
        "GET", "/v1/voices", request_id, params={"installed": "true", "limit": "500"}
    )
    try:
        routed = await route(
            state, call, tts_choice(TTS_VITS, "voices"), service=TTS_VITS, kind="tts"
        )
    except EngineUnavailable:
        return set()
    try:
        body = routed.response.json() if routed.response.status_code == 200 else {}
    finally:
        await routed.aclose()
    ids = {str(v["id"]) for v in body.get("voices", []) if isinstance(v, dict) and "id" in v}
    state.tts_voices = (time.monotonic(), frozenset(ids))
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


def clone_speech_call(request: Request, body: OpenAISpeechRequest) -> BackendCall:
    """``tts_clone``'s synthesis request for an OpenAI speech request in a cloned voice."""
    payload: dict[str, Any] = {
        "text": body.input,
        "voice_id": body.voice,
        "speed": body.speed,
        "format": body.response_format,
        "stream": True,
    }
    if body.response_format == "pcm":
        payload["sample_rate"] = OPENAI_PCM_RATE
    return BackendCall(
        "POST",
        "/v1/synthesize",
        request.state.request_id,
        json=payload,
        stream=True,
        headers=owner_headers(request),
    )


@router.post("/v1/audio/speech", response_model=None)
async def create_speech(
    request: Request, body: OpenAISpeechRequest, state: GatewayStateDep
) -> Response:
    """Speak ``input`` the way OpenAI's speech API does; the audio streams as it is made."""
    if body.response_format == "aac":
        raise BadRequest(
            "response_format 'aac' is not supported here; use mp3, opus, flac, wav or pcm",
            code="unsupported_format",
        )
    if not MIN_SPEED <= body.speed <= MAX_SPEED:
        raise BadRequest(
            f"speed must be between {MIN_SPEED} and {MAX_SPEED} on this server, got {body.speed}",
            code="bad_speed",
        )
    if body.stream_format == "sse":
        raise BadRequest(
            "stream_format 'sse' is not supported; use 'audio'", code="unsupported_format"
        )
    requested = body.voice.get("id", "") if isinstance(body.voice, dict) else body.voice
    if not isinstance(requested, str) or not requested:
        raise BadRequest("voice must be a voice name or id", code="bad_voice")
    if is_profile_id(requested):
        # A cloned voice: tts_clone speaks it, for the caller's key only.
        return await forward_tts(
            state,
            "speech",
            clone_speech_call(request, body),
            voice=requested,
            capability="synthesize",
        )
    voice = requested
    if requested.lower() in OPENAI_VOICES:
        voice = map_openai_voice(requested, await installed_voices(state, request.state.request_id))
    payload: dict[str, Any] = {
        "text": body.input,
        "voice": voice,
        "speed": body.speed,
        "format": body.response_format,
        "stream": True,
    }
    if body.response_format == "pcm":
        payload["sample_rate"] = OPENAI_PCM_RATE
    call = BackendCall(
        "POST", "/v1/synthesize", request.state.request_id, json=payload, stream=True
    )
    return await forward_tts(state, "speech", call, voice=voice, capability="synthesize")
