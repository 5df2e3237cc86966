"""``POST /v1/audio/transcriptions``: the OpenAI transcription API in front of the mesh.

The upload is read once (up to ``max_upload_bytes``) and forwarded as a multipart
request to an STT replica's ``POST /v1/transcribe`` by the gateway's one
forward-with-failover (:func:`gateway.proxy.route`). Replicas are tried in the
order :func:`gateway.routing.choose_backends` gives, as for streams: a replica
that cannot be reached, times out or answers 5xx is marked failed and the same
bytes go to the next one; a 4xx is the caller's fault and comes back as it is.
The backend's body is passed through with its content type; headers name the
engine, the replica, the model and how many failovers it took.
"""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from gateway.asr_models import narrow
from gateway.deps import GatewayStateDep
from gateway.proxy import BackendCall, request_record, respond, route
from gateway.routing import choose_backends
from voicemesh.errors import PayloadTooLarge
from voicemesh.registry import ReplicaInfo

router = APIRouter()

OpenAIResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TimestampGranularity = Literal["word", "segment"]

BACKEND_PATH = "/v1/transcribe"
PASSED_HEADERS = ("content-type", "x-voicemesh-engine")
"""Headers of the STT replica's answer that reach the client."""
# Room for the other form fields and the multipart framing: a body larger than the
# file limit plus this cannot hold an acceptable file, so it is refused unread.
FORM_OVERHEAD_BYTES = 1 << 20


def backend_fields(
    *,
    response_format: str,
    language: str | None,
    prompt: str | None,
    granularities: list[TimestampGranularity],
) -> dict[str, str]:
    """The STT service's form fields for an OpenAI request."""
    fields = {"response_format": response_format}
    if language and language.strip():
        fields["language"] = language.strip()
    if prompt and prompt.strip():
        fields["prompt"] = prompt
    if "word" in granularities:
        fields["word_timestamps"] = "true"
    return fields


async def read_upload(request: Request, file: UploadFile, limit: int) -> bytes:
    """The uploaded file's bytes, or PayloadTooLarge (413) past ``limit``."""
    declared = request.headers.get("content-length", "")
    too_large = PayloadTooLarge(
        f"file is larger than the limit of {limit} bytes", code="file_too_large"
    )
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise too_large
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
    state: GatewayStateDep,
    *,
    file: Annotated[UploadFile, File(description="audio: wav, flac, mp3, ogg, webm, ...")],
    model: Annotated[str, Form(description="any name; the routed replica serves")] = "whisper-1",
    language: Annotated[str | None, Form(description="ISO 639-1 code of the speech")] = None,
    prompt: Annotated[str | None, Form(description="text said just before the audio")] = None,
    response_format: Annotated[OpenAIResponseFormat, Form()] = "json",
    temperature: Annotated[float | None, Form(description="accepted and ignored")] = None,
    timestamp_granularities: Annotated[
        list[TimestampGranularity] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    """Transcribe one file on the mesh, the way OpenAI's transcription API does."""
    settings = state.settings
    request_id: str = request.state.request_id
    async with request_record(
        state, "transcription", request_id, model=model, response_format=response_format
    ) as record:
        data = await read_upload(request, file, settings.max_upload_bytes)
        fields = backend_fields(
            response_format=response_format,
            language=language,
            prompt=prompt,
            granularities=timestamp_granularities or [],
        )
        files = {
            "file": (
                file.filename or "audio",
                data,
                file.content_type or "application/octet-stream",
            )
        }
        call = BackendCall("POST", BACKEND_PATH, request_id, files=files, data=fields)
        mode = state.view.mode

        def choose(replicas: list[ReplicaInfo]) -> list[ReplicaInfo]:
            ordered = choose_backends(
                mode, replicas, capability="transcribe", gpu_max_load=settings.gpu_max_load
            )
            return narrow(ordered, None, state.view.default_model)  # the mesh's default first

        routed = await route(state, call, choose, service="STT", kind="transcription")
        record.served(routed)
        model_header = {"X-VoiceMesh-Model": routed.replica.model} if routed.replica.model else {}
        return await respond(routed, PASSED_HEADERS, model_header)
