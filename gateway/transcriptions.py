"""``POST /v1/audio/transcriptions``: the OpenAI transcription API in front of the mesh.

The upload is read once (up to ``max_upload_bytes``) and forwarded as a multipart
request to an STT replica's ``POST /v1/transcribe``. Replicas are tried in the
order :func:`gateway.routing.choose_backends` gives, as for streams: a replica
that cannot be reached, times out or answers 5xx is marked failed and the same
bytes go to the next one; a 4xx is the caller's fault and comes back as it is.
The backend's body is passed through with its content type; headers name the
engine, the replica, the model and how many failovers it took.
"""

from __future__ import annotations

import logging
import time
from typing import Annotated, Literal

import httpx
from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response

from gateway.routing import choose_backends
from gateway.state import GatewayState
from voicemesh.errors import (
    BackendClosed,
    BackendTimeout,
    EngineUnavailable,
    PayloadTooLarge,
    VoiceMeshError,
)
from voicemesh.registry import ReplicaInfo

_LOGGER = logging.getLogger(__name__)

router = APIRouter()

OpenAIResponseFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TimestampGranularity = Literal["word", "segment"]

BACKEND_PATH = "/v1/transcribe"
# Room for the other form fields and the multipart framing: a body larger than the
# file limit plus this cannot hold an acceptable file, so it is refused unread.
FORM_OVERHEAD_BYTES = 1 << 20


class TranscriptionJob:
    """One uploaded file and the backend form fields it becomes."""

    def __init__(
        self,
        data: bytes,
        filename: str,
        content_type: str,
        fields: dict[str, str],
        request_id: str,
    ) -> None:
        self.data = data
        self.filename = filename
        self.content_type = content_type
        self.fields = fields
        self.request_id = request_id

    async def send(self, client: httpx.AsyncClient, replica: ReplicaInfo) -> httpx.Response:
        """POST the file to ``replica``; a backend that cannot serve raises EngineUnavailable.

        A 2xx or 4xx response is returned: the first is the transcript, the second
        the caller's mistake, which another replica would refuse just the same.
        """
        url = f"{replica.url}{BACKEND_PATH}"
        try:
            response = await client.post(
                url,
                files={"file": (self.filename, self.data, self.content_type)},
                data=self.fields,
                headers={"X-Request-ID": self.request_id},
            )
        except httpx.TimeoutException as exc:
            raise BackendTimeout(f"{url} timed out: {exc!r}") from exc
        except httpx.TransportError as exc:
            raise BackendClosed(f"cannot reach {url}: {exc!r}") from exc
        if response.status_code >= 500:
            raise EngineUnavailable(
                f"{url} answered {response.status_code}: {_error_message(response)}",
                code="backend_error",
            )
        return response


def _error_message(response: httpx.Response) -> str:
    """The message of a backend's JSON error, or the start of its body."""
    try:
        return str(response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return response.text[:200]


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
    too_large = PayloadTooLarge(f"file is larger than the limit of {limit} bytes",
                                code="file_too_large")
    if declared.isdigit() and int(declared) > limit + FORM_OVERHEAD_BYTES:
        raise too_large
    data = await file.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


@router.post("/v1/audio/transcriptions", response_model=None)
async def create_transcription(
    request: Request,
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
    state: GatewayState = request.app.state.gateway
    settings = state.settings
    request_id: str = request.state.request_id
    started = time.perf_counter()
    status_code = 500
    served_by: ReplicaInfo | None = None
    failovers = 0
    try:
        data = await read_upload(request, file, settings.max_upload_bytes)
        job = TranscriptionJob(
            data,
            file.filename or "audio",
            file.content_type or "application/octet-stream",
            backend_fields(response_format=response_format, language=language,
                           prompt=prompt, granularities=timestamp_granularities or []),
            request_id,
        )
        mode = state.view.mode
        candidates = state.view.route(
            lambda replicas: choose_backends(mode, replicas, capability="transcribe",
                                             gpu_max_load=settings.gpu_max_load))
        timeout = httpx.Timeout(settings.request_timeout_s, connect=settings.connect_timeout_s)
        last_error = "no STT replica is registered"
        response: httpx.Response | None = None
        async with httpx.AsyncClient(timeout=timeout) as client:
            for index, replica in enumerate(candidates):
                state.view.assign(replica)
                try:
                    response = await job.send(client, replica)
                except EngineUnavailable as exc:
                    last_error = exc.message
                    state.view.mark_failed(replica)
                    _LOGGER.warning("request %s: %s failed: %s: %s", request_id, replica.url,
                                    exc.code, exc.message)
                    if index + 1 < len(candidates):
                        failovers += 1
                        _count_failover(state, request_id, replica, candidates[index + 1], exc)
                    continue
                finally:
                    state.view.release(replica)
                served_by = replica
                break
        if response is None or served_by is None:
            raise EngineUnavailable(f"no STT backend could transcribe the file: {last_error}",
                                    code="no_backend")
        status_code = response.status_code
        return _pass_through(response, served_by, failovers)
    except VoiceMeshError as exc:
        status_code = exc.status_code
        raise
    finally:
        latency_ms = round((time.perf_counter() - started) * 1000, 1)
        state.record_request(
            "transcription", status=status_code, latency_ms=latency_ms, request_id=request_id,
            model=model, response_format=response_format,
            backend=served_by.url if served_by else None, failovers=failovers)
        _LOGGER.info("request %s: transcription %s via %s in %.0f ms (%d failovers)",
                     request_id, status_code, served_by.url if served_by else None,
                     latency_ms, failovers)


def _count_failover(state: GatewayState, request_id: str, failed: ReplicaInfo,
                    following: ReplicaInfo, exc: EngineUnavailable, *,
                    kind: str = "transcription") -> None:
    """Make a failover visible: a metric by reason and a ``failover`` event."""
    state.metrics.count("failover", exc.code)
    counter = getattr(state.metrics, "failovers", None)
    if counter is not None:
        counter.labels(reason=exc.code).inc()
    state.events.publish("failover", kind=kind, request_id=request_id,
                         **{"from": failed.url}, to=following.url, reason=exc.code)


def _pass_through(response: httpx.Response, replica: ReplicaInfo, failovers: int) -> Response:
    """The backend's answer as the client's, with headers naming who served it."""
    headers = {"X-VoiceMesh-Backend": replica.url}
    engine = response.headers.get("x-voicemesh-engine")
    if engine:
        headers["X-VoiceMesh-Engine"] = engine
    if replica.model:
        headers["X-VoiceMesh-Model"] = replica.model
    if failovers:
        headers["X-VoiceMesh-Failover"] = str(failovers)
    return Response(response.content, status_code=response.status_code, headers=headers,
                    media_type=response.headers.get("content-type"))
