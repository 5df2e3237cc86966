"""Cloned voices through the gateway: ``/v1/clone/*`` routed to ``tts_clone``.

* ``GET``/``POST /v1/clone/voices``, ``GET``/``DELETE /v1/clone/voices/{id}``: voice
  profiles (the upload is read once, up to ``max_upload_bytes``, and forwarded as
  multipart);
* ``POST /v1/clone/synthesize``: speech in a cloned voice, streamed through when asked;
* ``POST /v1/audio/speech`` with ``voice`` set to a profile id comes here too (see
  :func:`gateway.tts.create_speech`).

Every call carries the caller's key identity in ``X-VoiceMesh-Key-Id`` (the key's
fingerprint, never the key; ``anonymous`` with auth off), which ``tts_clone`` uses as
the owner of profiles: another key's voice is a 404. Replicas are chosen and failed
over exactly as for the other TTS routes (:func:`gateway.proxy.forward`).
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from gateway.deps import GatewayStateDep
from gateway.keys import Principal
from gateway.proxy import (
    TTS_HEADERS,
    BackendCall,
    forward,
    json_body,
    refuse_unknown_form_fields,
)
from gateway.routing import choose_service
from gateway.state import GatewayState
from gateway.transcriptions import read_upload
from voicemesh.clone.synthesis import SynthesizeBody
from voicemesh.errors import VoiceNotFound
from voicemesh.protocol import ANONYMOUS, OWNER_HEADER

router = APIRouter()

TTS_CLONE = "tts_clone"
PROFILE_ID = re.compile(r"^v_[0-9a-f]{16}$")
"""What ``tts_clone`` voice ids look like; no catalogue voice id does."""
CREATE_FIELDS = ("audio", "name", "prompt_text", "language", "consent")
"""Every form field ``POST /v1/clone/voices`` takes; any other is refused."""


def is_profile_id(voice: str) -> bool:
    """True when ``voice`` names a cloned-voice profile rather than a catalogue voice."""
    return bool(PROFILE_ID.match(voice))


def profile_path(voice_id: str) -> str:
    """``tts_clone``'s path of profile ``voice_id``; 404 for an id no profile can have.

    The id comes from the client's URL: put in the backend's URL as it is, a control
    character made httpx refuse the URL (a 500) and ``..`` named another route.
    """
    if not is_profile_id(voice_id):
        raise VoiceNotFound(f"no voice {voice_id[:64]!r}: voice ids look like v_ and 16 hex digits")
    return f"/v1/voices/{voice_id}"


def owner_id(request: Request) -> str:
    """The caller's key identity: its key's fingerprint (``anonymous`` with auth off)."""
    principal: Principal | None = getattr(request.state, "principal", None)
    return principal.key_id if principal is not None else ANONYMOUS


def owner_headers(request: Request) -> dict[str, str]:
    """The caller's key identity for ``tts_clone`` (set by the gateway, never by the client)."""
    return {OWNER_HEADER: owner_id(request)}


def _call(request: Request, method: str, path: str, **extra: Any) -> BackendCall:
    return BackendCall(
        method, path, request.state.request_id, headers=owner_headers(request), **extra
    )


async def _forward(
    state: GatewayState, what: str, call: BackendCall, voice: str | None = None
) -> Response:
    return await forward(
        state,
        what,
        call,
        lambda replicas: choose_service(TTS_CLONE, replicas, capability="clone"),
        service=TTS_CLONE,
        kind="tts",
        passed=TTS_HEADERS,
        voice=voice,
    )


@router.get("/v1/clone/voices", response_model=None)
async def list_voices(request: Request, state: GatewayStateDep) -> Response:
    """The caller's cloned voices."""
    return await _forward(state, "clone_voices", _call(request, "GET", "/v1/voices"))


@router.post("/v1/clone/voices", response_model=None)
async def create_voice(
    request: Request,
    state: GatewayStateDep,
    *,
    audio: Annotated[UploadFile, File(description="reference recording, 3-10 s of speech")],
    name: Annotated[str, Form()],
    prompt_text: Annotated[str | None, Form()] = None,
    language: Annotated[str | None, Form()] = None,
    consent: Annotated[bool, Form()] = False,
) -> Response:
    """Make a voice profile from a reference recording."""
    await refuse_unknown_form_fields(request, CREATE_FIELDS)
    data = await read_upload(request, audio, state.settings.max_upload_bytes)
    fields = {"name": name, "consent": "true" if consent else "false"}
    if prompt_text:
        fields["prompt_text"] = prompt_text
    if language:
        fields["language"] = language
    files = {
        "audio": (
            audio.filename or "reference",
            data,
            audio.content_type or "application/octet-stream",
        )
    }
    call = _call(request, "POST", "/v1/voices", files=files, data=fields)
    return await _forward(state, "clone_voices", call)


@router.get("/v1/clone/voices/{voice_id}", response_model=None)
async def get_voice(request: Request, voice_id: str, state: GatewayStateDep) -> Response:
    """One of the caller's voices."""
    return await _forward(state, "clone_voices", _call(request, "GET", profile_path(voice_id)))


@router.delete("/v1/clone/voices/{voice_id}", response_model=None)
async def delete_voice(request: Request, voice_id: str, state: GatewayStateDep) -> Response:
    """Delete one of the caller's voices (and its audio, when no other profile uses it)."""
    return await _forward(state, "clone_voices", _call(request, "DELETE", profile_path(voice_id)))


SYNTHESIZE_BODY = {
    "required": True,
    "content": {"application/json": {"schema": SynthesizeBody.model_json_schema()}},
}
"""``tts_clone``'s body, declared in the gateway's schema (the gateway forwards it as it is,
and ``tts_clone`` validates it), so that clients and the schema fuzz see its fields."""


@router.post(
    "/v1/clone/synthesize", response_model=None, openapi_extra={"requestBody": SYNTHESIZE_BODY}
)
async def synthesize(request: Request, state: GatewayStateDep) -> Response:
    """``tts_clone``'s ``POST /v1/synthesize`` (streamed through when ``stream`` is true)."""
    body = await json_body(request)
    call = _call(request, "POST", "/v1/synthesize", json=body, stream=bool(body.get("stream")))
    voice = body.get("voice_id")
    return await _forward(
        state, "clone_synthesize", call, voice if isinstance(voice, str) else None
    )
