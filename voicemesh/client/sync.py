"""``VoiceMeshClient``: the same interface as :class:`AsyncVoiceMeshClient`, blocking.

HTTP calls use an ``httpx.Client`` and the same :mod:`voicemesh.client.calls`. The two
WebSocket iterators (:meth:`VoiceMeshClient.stream`, :meth:`VoiceMeshClient.stream_status`)
run the async implementation on a private event loop, one step per item, so they work
from any thread that is not already running an event loop (in a notebook or async code,
use :class:`AsyncVoiceMeshClient`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Generator, Iterator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx

from voicemesh.client import calls
from voicemesh.client.api import DEFAULT_URL, STATUS_PATH, STREAM_PATH, ClientConfig, status_events
from voicemesh.client.audio_input import AudioInput, audio_blocks
from voicemesh.client.calls import (
    AudioFile,
    AudioFormat,
    Call,
    Candidate,
    SpeechOptions,
    TextFormat,
)
from voicemesh.client.models import (
    ClonedVoice,
    Comparison,
    MeshStatus,
    StatusEvent,
    StreamEvent,
    Synthesis,
    Transcription,
)
from voicemesh.protocol import SAMPLE_RATE

T = TypeVar("T")


def iterate_blocking(events: AsyncIterator[T]) -> Generator[T, None, None]:
    """Drive an async iterator from blocking code on its own event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass  # no loop runs in this thread: the private one can
    else:
        raise RuntimeError(
            "VoiceMeshClient's streams block; inside running async code use "
            "AsyncVoiceMeshClient (async for event in vm.stream(...))"
        )
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                yield loop.run_until_complete(anext(events))
            except StopAsyncIteration:
                return
    finally:
        aclose = getattr(events, "aclose", None)
        if aclose is not None:
            loop.run_until_complete(aclose())
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


class VoiceMeshClient:
    """The VoiceMesh gateway from blocking code: transcription, streaming, speech, cloning,
    status. ``with VoiceMeshClient(url, api_key=KEY) as vm: ...``."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, admin_key, timeout)
        self._http = httpx.Client(
            base_url=self.config.base_url, timeout=timeout, transport=transport
        )

    def __enter__(self) -> VoiceMeshClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the HTTP connections."""
        self._http.close()

    def _run(self, call: Call[T]) -> T:
        try:
            response = self._http.request(
                call.method,
                call.path,
                headers=self.config.headers(call.admin),
                **call.request_args(),
            )
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.config.base_url) from exc
        return call.parse(calls.checked(response))

    # ------------------------------------------------------------------ ASR

    def transcribe(
        self,
        audio: AudioFile,
        *,
        model: str | None = None,
        language: str | None = None,
        enable_diarization: bool | None = None,
    ) -> Transcription:
        """Transcribe one file (``POST /v1/asr/transcribe``): text, segments, confidence."""
        options = {"model": model, "language": language, "enable_diarization": enable_diarization}
        return self._run(calls.transcribe_json(audio, **options))

    def transcribe_text(
        self,
        audio: AudioFile,
        response_format: TextFormat = "srt",
        *,
        model: str | None = None,
        language: str | None = None,
    ) -> str:
        """Transcribe one file into subtitles (srt, vtt, lrc) or plain text (txt)."""
        options = {"model": model, "language": language, "enable_diarization": None}
        return self._run(calls.transcribe_text(audio, response_format, **options))

    def asr_models(self) -> dict[str, Any]:
        """``GET /v1/asr/models``: every speech-recognition model and which is the default."""
        return self._run(calls.asr_models())

    def stream(
        self,
        source: AudioInput,
        *,
        sample_rate: int = SAMPLE_RATE,
        language: str | None = None,
        realtime: bool = False,
        frame_ms: float = 40.0,
        reconnects: int = 5,
        buffer_s: float = 60.0,
        path: str = STREAM_PATH,
    ) -> Generator[StreamEvent, None, None]:
        """Stream audio over ``WS /ws/transcribe`` and yield its events (see
        :meth:`AsyncVoiceMeshClient.stream`); ``source`` may also be a plain iterator."""
        session = self.config.transcription_stream(path, language, reconnects, buffer_s)

        async def events() -> AsyncGenerator[StreamEvent, None]:
            blocks = audio_blocks(
                source, sample_rate=sample_rate, frame_ms=frame_ms, realtime=realtime
            )
            async with contextlib.aclosing(session.events(blocks)) as stream:
                async for event in stream:
                    yield event

        return iterate_blocking(events())

    # ------------------------------------------------------------------ TTS

    def synthesize(self, text: str, **options: Unpack[SpeechOptions]) -> Synthesis:
        """Speak ``text`` (``POST /v1/tts/synthesize``): the audio and who made it."""
        return self._run(calls.synthesize(text, options))

    def synthesize_stream(self, text: str, **options: Unpack[SpeechOptions]) -> Iterator[bytes]:
        """Speak ``text`` and yield the audio in chunks as it is made (sentence by sentence)."""
        body = calls.synthesize_body(text, options, stream=True)
        try:
            with self._http.stream(
                "POST", calls.SYNTHESIZE_PATH, json=body, headers=self.config.headers()
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    calls.checked(response)
                yield from response.iter_bytes()
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.config.base_url) from exc

    def compare_voices(
        self,
        text: str,
        candidates: Sequence[Candidate],
        *,
        metrics: Sequence[str] | None = None,
        format: AudioFormat | None = None,
        sample_rate: int | None = None,
    ) -> Comparison:
        """Several voices (or speeds) on one text, measured, with a recommendation."""
        return self._run(
            calls.compare_voices(
                text, candidates, metrics=metrics, format=format, sample_rate=sample_rate
            )
        )

    def fetch_audio(self, audio_url: str) -> bytes:
        """The audio behind an ``audio_url`` of a compare (or a JSON synthesis)."""
        return self._run(calls.fetch_audio(audio_url))

    def voices(self, **filters: Any) -> dict[str, Any]:
        """``GET /v1/tts/voices`` (``model``, ``gender``, ``mood``, ``language``, ``page``...)."""
        return self._run(calls.voices(**filters))

    # ------------------------------------------------------------------ cloning

    def clone_voice(
        self,
        audio: AudioFile,
        name: str,
        *,
        consent: bool,
        prompt_text: str | None = None,
        language: str | None = None,
    ) -> ClonedVoice:
        """A voice from a 3-10 s reference recording; speak with it by its ``voice_id``."""
        return self._run(
            calls.clone_voice(
                audio, name, consent=consent, prompt_text=prompt_text, language=language
            )
        )

    def cloned_voices(self) -> list[ClonedVoice]:
        """The cloned voices of this key."""
        return self._run(calls.cloned_voices())

    def delete_cloned_voice(self, voice_id: str) -> None:
        """Delete a cloned voice of this key."""
        self._run(calls.delete_cloned_voice(voice_id))

    # ------------------------------------------------------------------ admin

    def set_mode(self, mode: str) -> dict[str, Any]:
        """``POST /v1/admin/mode``: the STT routing mode (``gpu``, ``cpu``, ``auto``)."""
        return self._run(calls.set_mode(mode))

    def models(self) -> dict[str, Any]:
        """``GET /v1/admin/models``: every ASR and TTS model and its status per replica."""
        return self._run(calls.models())

    def load_model(self, model: str, *, replicas: Sequence[str] | None = None) -> dict[str, Any]:
        """Load ``model`` on the replicas that hold it (or those of ``replicas``)."""
        chosen = list(replicas) if replicas is not None else None
        return self._run(calls.model_action(model, "load", replicas=chosen))

    def unload_model(
        self, model: str, *, force: bool = False, replicas: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Unload ``model``; ``force`` ends open sessions and allows the last STT model."""
        chosen = list(replicas) if replicas is not None else None
        return self._run(calls.model_action(model, "unload", force=force, replicas=chosen))

    def set_default_model(self, model: str) -> dict[str, Any]:
        """Make ``model`` the ASR model of requests that name none, on every gateway."""
        return self._run(calls.model_action(model, "default"))

    def reload_config(self) -> dict[str, Any]:
        """Re-read the run-time settings (mode, limits, keys file) on every gateway."""
        return self._run(calls.reload_config())

    def start_benchmark(
        self,
        kind: calls.BenchmarkKind = "stt",
        *,
        clients: int | None = None,
        clips: int | None = None,
        real_time: bool | None = None,
    ) -> dict[str, Any]:
        """Start a bounded benchmark of the live mesh; answers its id at once."""
        return self._run(calls.start_benchmark(kind, clients, clips, real_time))

    def benchmark_results(self, run_id: str | None = None) -> dict[str, Any]:
        """Every run (newest first), or one run's progress and, once done, its result."""
        return self._run(calls.benchmark_results(run_id))

    def wait_benchmark(
        self, run_id: str, *, poll_s: float = 1.0, timeout_s: float = 900.0
    ) -> dict[str, Any]:
        """Poll a run until it is completed or failed; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = self.benchmark_results(run_id)
            if run.get("status") in calls.BENCHMARK_DONE:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"benchmark {run_id} still {run.get('status')} after {timeout_s} s"
                )
            time.sleep(poll_s)

    # ------------------------------------------------------------------ status

    def status(self) -> MeshStatus:
        """``GET /v1/admin/status``: services, replicas, mode, sessions, request stats."""
        return self._run(calls.status())

    def stream_status(self) -> Generator[StatusEvent, None, None]:
        """``WS /v1/ws/status`` as events, until you stop iterating."""
        url = self.config.ws_url(STATUS_PATH)
        return iterate_blocking(status_events(url, self.config.headers(admin=True)))
