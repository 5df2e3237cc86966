"""Every HTTP call of the client as data: what to send, and how to read the answer.

The async and the sync client run the same :class:`Call` objects, each with its own
httpx client, so the two cannot drift apart.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Generic, Literal, TypeAlias, TypedDict, TypeVar
from urllib.parse import quote

import httpx

from voicemesh.client.errors import ServerError, TransportError, error_from_http
from voicemesh.client.models import (
    ClonedVoice,
    Comparison,
    MeshStatus,
    Synthesis,
    Transcription,
    VoiceCandidate,
)

T = TypeVar("T")

AudioFile: TypeAlias = str | os.PathLike[str] | bytes | IO[bytes]
"""An audio file to upload: a path, its bytes, or a binary file object."""
TextFormat = Literal["srt", "vtt", "txt", "lrc"]
AudioFormat = Literal["wav", "mp3", "flac", "pcm", "opus"]
Candidate: TypeAlias = VoiceCandidate | Mapping[str, Any] | int | str
"""A voice to compare: a :class:`VoiceCandidate`, its fields as a dict, or a voice id."""


@dataclass
class Call(Generic[T]):
    """One HTTP request to the gateway and the parser of its 2xx answer."""

    method: str
    path: str
    parse: Callable[[httpx.Response], T]
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None
    data: dict[str, str] | None = None
    files: dict[str, tuple[str, bytes, str]] | None = None
    admin: bool = False
    """Send the admin key (when the client has one) instead of the API key."""

    def request_args(self) -> dict[str, Any]:
        """Keyword arguments of ``httpx.Client.request`` for this call."""
        args: dict[str, Any] = {"params": self.params, "json": self.json}
        if self.files is not None:
            args.update(data=self.data, files=self.files)
        return args


def checked(response: httpx.Response) -> httpx.Response:
    """``response`` when it is a success; the gateway's error as a typed exception if not."""
    if response.status_code >= 400:
        raise error_from_http(response)
    return response


def transport_error(exc: httpx.HTTPError, base_url: str) -> TransportError:
    """An httpx failure to reach or read from the gateway, in the client's tree."""
    if isinstance(exc, httpx.TimeoutException):
        return TransportError(f"{base_url} timed out: {exc!r}")
    return TransportError(f"cannot reach {base_url}: {exc!r} (is the mesh up?)")


def json_object(response: httpx.Response) -> dict[str, Any]:
    """A 2xx answer's JSON object (a ServerError when it is something else)."""
    try:
        body = json.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise ServerError(
            "bad_response", f"the gateway answered {response.text[:200]!r}, not a JSON object"
        )
    return body


def read_audio_file(audio: AudioFile, default_name: str) -> tuple[str, bytes]:
    """(file name, bytes) of an upload given as a path, bytes or a binary file."""
    if isinstance(audio, bytes | bytearray):
        return default_name, bytes(audio)
    if isinstance(audio, str | os.PathLike):
        path = Path(audio)
        return path.name, path.read_bytes()
    name = getattr(audio, "name", None)
    return (Path(name).name if isinstance(name, str) else default_name), audio.read()


def _without_none(**fields: Any) -> dict[str, Any]:
    return {k: v for k, v in fields.items() if v is not None}


def transcribe(
    audio: AudioFile,
    *,
    model: str | None,
    language: str | None,
    response_format: str,
    enable_diarization: bool | None,
) -> tuple[str, dict[str, str], dict[str, tuple[str, bytes, str]]]:
    """The multipart of ``POST /v1/asr/transcribe``: (path, form fields, file)."""
    name, data = read_audio_file(audio, "audio.wav")
    fields = _without_none(model=model, language=language, response_format=response_format)
    if enable_diarization is not None:
        fields["enable_diarization"] = "true" if enable_diarization else "false"
    return "/v1/asr/transcribe", fields, {"audio": (name, data, "application/octet-stream")}


def transcribe_json(audio: AudioFile, **options: Any) -> Call[Transcription]:
    """``POST /v1/asr/transcribe`` answering JSON."""
    path, data, files = transcribe(audio, response_format="json", **options)
    return Call(
        "POST",
        path,
        lambda r: Transcription.model_validate(json_object(r)),
        data=data,
        files=files,
    )


def transcribe_text(audio: AudioFile, fmt: TextFormat, **options: Any) -> Call[str]:
    """``POST /v1/asr/transcribe`` answering subtitles or plain text."""
    path, data, files = transcribe(audio, response_format=fmt, **options)
    return Call("POST", path, lambda r: r.text, data=data, files=files)


class SpeechOptions(TypedDict, total=False):
    """The options of ``synthesize`` and ``synthesize_stream`` (the API's own field names)."""

    voice_id: int | str
    """A catalogue voice id, a speaker index of ``model``, or a cloned voice's id."""
    model: str
    """A catalogue model id (whose speaker index ``voice_id`` is)."""
    speed: float
    """0.5 to 2.0."""
    volume_db: float
    """-60 to +25 dB; a limiter keeps the peaks from clipping."""
    format: AudioFormat
    """wav (the default), mp3, flac, pcm or opus."""
    sample_rate: int
    """8000 to 48000 (default: the voice's own)."""


def synthesize_body(text: str, options: SpeechOptions, *, stream: bool = False) -> dict[str, Any]:
    """The JSON body of ``POST /v1/tts/synthesize`` (options left out are the API's defaults)."""
    body: dict[str, Any] = {"text": text, "format": "wav"}
    body.update({k: v for k, v in options.items() if v is not None})
    if stream:
        body["stream"] = True
    return body


SYNTHESIZE_PATH = "/v1/tts/synthesize"


def synthesize(text: str, options: SpeechOptions) -> Call[Synthesis]:
    """``POST /v1/tts/synthesize`` answering the audio itself."""
    return Call(
        "POST", SYNTHESIZE_PATH, Synthesis.from_response, json=synthesize_body(text, options)
    )


def candidate_body(candidate: Candidate) -> dict[str, Any]:
    """A compare candidate as the API takes it."""
    if isinstance(candidate, int | str):
        candidate = VoiceCandidate(voice_id=candidate)
    elif not isinstance(candidate, VoiceCandidate):
        candidate = VoiceCandidate.model_validate(dict(candidate))
    return candidate.model_dump(exclude_none=True)


def compare_voices(
    text: str,
    candidates: Sequence[Candidate],
    *,
    metrics: Sequence[str] | None,
    format: str | None,
    sample_rate: int | None,
) -> Call[Comparison]:
    """``POST /v1/tts/compare``."""
    body = _without_none(
        text=text,
        candidates=[candidate_body(c) for c in candidates],
        metrics=list(metrics) if metrics else None,
        format=format,
        sample_rate=sample_rate,
    )
    return Call(
        "POST", "/v1/tts/compare", lambda r: Comparison.model_validate(json_object(r)), json=body
    )


def fetch_audio(audio_url: str) -> Call[bytes]:
    """``GET`` an ``audio_url`` a synthesis or compare answered (this key only)."""
    return Call("GET", audio_url, lambda r: r.content)


def clone_voice(
    audio: AudioFile,
    name: str,
    *,
    consent: bool,
    prompt_text: str | None,
    language: str | None,
) -> Call[ClonedVoice]:
    """``POST /v1/clone/voices``: a voice profile from a reference recording."""
    filename, data = read_audio_file(audio, "reference.wav")
    fields = _without_none(
        name=name,
        consent="true" if consent else "false",
        prompt_text=prompt_text,
        language=language,
    )
    return Call(
        "POST",
        "/v1/clone/voices",
        lambda r: ClonedVoice.model_validate(json_object(r)),
        data=fields,
        files={"audio": (filename, data, "application/octet-stream")},
    )


def cloned_voices() -> Call[list[ClonedVoice]]:
    """``GET /v1/clone/voices``: the caller's cloned voices."""
    return Call(
        "GET",
        "/v1/clone/voices",
        lambda r: [ClonedVoice.model_validate(v) for v in json_object(r).get("voices", [])],
    )


def delete_cloned_voice(voice_id: str) -> Call[None]:
    """``DELETE /v1/clone/voices/{id}``."""
    return Call("DELETE", f"/v1/clone/voices/{voice_id}", lambda r: None)


def status() -> Call[MeshStatus]:
    """``GET /v1/admin/status``."""
    return Call(
        "GET",
        "/v1/admin/status",
        lambda r: MeshStatus.model_validate(json_object(r)),
        admin=True,
    )


def asr_models() -> Call[dict[str, Any]]:
    """``GET /v1/asr/models``: every ASR model of the mesh (``models``, ``default``)."""
    return Call("GET", "/v1/asr/models", json_object)


def voices(**filters: Any) -> Call[dict[str, Any]]:
    """``GET /v1/tts/voices`` with its filters (``voices``, ``pagination``...)."""
    return Call("GET", "/v1/tts/voices", json_object, params=_without_none(**filters))


# ---------------------------------------------------------------------- admin

BenchmarkKind = Literal["stt", "tts", "both"]


def set_mode(mode: str) -> Call[dict[str, Any]]:
    """``POST /v1/admin/mode``: ``gpu``, ``cpu`` or ``auto`` for every gateway replica."""
    return Call("POST", "/v1/admin/mode", json_object, json={"mode": mode}, admin=True)


def models() -> Call[dict[str, Any]]:
    """``GET /v1/admin/models``: every ASR and TTS model, its replicas and their status."""
    return Call("GET", "/v1/admin/models", json_object, admin=True)


def model_action(
    model: str, action: Literal["load", "unload", "default"], **options: Any
) -> Call[dict[str, Any]]:
    """``POST /v1/admin/models/{id}/{load|unload|default}`` (``force``, ``replicas``)."""
    path = f"/v1/admin/models/{quote(model, safe='')}/{action}"
    return Call("POST", path, json_object, json=_without_none(**options), admin=True)


def reload_config() -> Call[dict[str, Any]]:
    """``POST /v1/admin/config/reload``: what changed on the gateway replicas."""
    return Call("POST", "/v1/admin/config/reload", json_object, json={}, admin=True)


def start_benchmark(
    kind: BenchmarkKind, clients: int | None, clips: int | None, real_time: bool | None
) -> Call[dict[str, Any]]:
    """``POST /v1/benchmark/run``: the run's id at once; it goes on in the background."""
    body = _without_none(kind=kind, clients=clients, clips=clips, real_time=real_time)
    return Call("POST", "/v1/benchmark/run", json_object, json=body, admin=True)


def benchmark_results(run_id: str | None = None) -> Call[dict[str, Any]]:
    """``GET /v1/benchmark/results`` (every run), or one run's progress and result."""
    path = "/v1/benchmark/results" + (f"/{quote(run_id, safe='')}" if run_id else "")
    return Call("GET", path, json_object, admin=True)


BENCHMARK_DONE = frozenset({"completed", "failed"})
"""Statuses after which a benchmark run changes no more."""
