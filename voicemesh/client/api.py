"""``AsyncVoiceMeshClient``: every interface of the gateway from asyncio code.

HTTP goes through one ``httpx.AsyncClient``; the two WebSockets (streaming
transcription, live status) through ``websockets``. Errors come back as the typed
exceptions of :mod:`voicemesh.client.errors`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Sequence
from types import TracebackType
from typing import Any, TypeVar, Unpack

import httpx
import websockets

from voicemesh.client import calls
from voicemesh.client.audio_input import AudioInput, audio_blocks
from voicemesh.client.calls import (
    AudioFile,
    AudioFormat,
    Call,
    Candidate,
    SpeechOptions,
    TextFormat,
)
from voicemesh.client.errors import TransportError, error_from_ws
from voicemesh.client.models import (
    ClonedVoice,
    Comparison,
    MeshStatus,
    StatusEvent,
    StreamEvent,
    Synthesis,
    Transcription,
)
from voicemesh.client.replay import Backoff
from voicemesh.client.streaming import TranscriptionStream
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.tasks import within

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8080"
"""The gateway of ``voicemesh up``."""
STREAM_PATH = "/ws/transcribe"
STATUS_PATH = "/v1/ws/status"


class ClientConfig:
    """Where the gateway is and which keys to present (shared by both clients)."""

    def __init__(
        self, base_url: str, api_key: str | None, admin_key: str | None, timeout: float
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.api_key = api_key
        self.admin_key = admin_key
        self.timeout = timeout

    def headers(self, admin: bool = False) -> dict[str, str]:
        """The key header: the admin key for admin calls when there is one."""
        key = (self.admin_key or self.api_key) if admin else self.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    def ws_url(self, path: str) -> str:
        """The WebSocket URL of ``path`` on the gateway."""
        scheme, _, rest = self.base_url.partition("://")
        return f"{'wss' if scheme == 'https' else 'ws'}://{rest}{path}"

    def transcription_stream(
        self, path: str, language: str | None, reconnects: int, buffer_s: float
    ) -> TranscriptionStream:
        """A :class:`TranscriptionStream` to ``path`` with this config's key."""
        return TranscriptionStream(
            self.ws_url(path),
            headers=self.headers(),
            language=language,
            backoff=Backoff(first_s=0.5, max_s=8.0, attempts=reconnects),
            buffer_s=buffer_s,
            final_timeout_s=self.timeout,
        )


async def status_events(url: str, headers: dict[str, str]) -> AsyncGenerator[StatusEvent, None]:
    """``WS /v1/ws/status`` as :class:`StatusEvent` objects until the caller stops."""
    try:
        ws = await websockets.connect(url, additional_headers=headers, max_size=None)
    except (OSError, TimeoutError, websockets.InvalidHandshake) as exc:
        raise TransportError(f"cannot reach {url}: {exc!r}") from exc
    try:
        while True:
            try:
                message = json.loads(await ws.recv())
            except websockets.ConnectionClosed as exc:
                raise TransportError(f"the status feed closed ({exc})") from exc
            if message.get("type") == "error":
                with contextlib.suppress(TimeoutError):
                    await within(5.0, ws.wait_closed())
                raise error_from_ws(message, ws.close_code)
            yield StatusEvent.from_message(message)
    finally:
        await ws.close()


class AsyncVoiceMeshClient:
    """The VoiceMesh gateway from asyncio: transcription, streaming, speech, cloning, status.

    ``async with AsyncVoiceMeshClient(url, api_key=KEY) as vm: ...``; ``admin_key`` is
    used for :meth:`status` and :meth:`stream_status` when given (else the API key).
    """

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        *,
        api_key: str | None = None,
        admin_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.config = ClientConfig(base_url, api_key, admin_key, timeout)
        self._http = httpx.AsyncClient(
            base_url=self.config.base_url, timeout=timeout, transport=transport
        )

    async def __aenter__(self) -> AsyncVoiceMeshClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        await self._http.aclose()

    async def _run(self, call: Call[T]) -> T:
        try:
            response = await self._http.request(
                call.method,
                call.path,
                headers=self.config.headers(call.admin),
                **call.request_args(),
            )
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.config.base_url) from exc
        return call.parse(calls.checked(response))

    # ------------------------------------------------------------------ ASR

    async def transcribe(
        self,
        audio: AudioFile,
        *,
        model: str | None = None,
        language: str | None = None,
        enable_diarization: bool | None = None,
    ) -> Transcription:
        """Transcribe one file (``POST /v1/asr/transcribe``): text, segments, confidence."""
        options = {"model": model, "language": language, "enable_diarization": enable_diarization}
        return await self._run(calls.transcribe_json(audio, **options))

    async def transcribe_text(
        self,
        audio: AudioFile,
        response_format: TextFormat = "srt",
        *,
        model: str | None = None,
        language: str | None = None,
    ) -> str:
        """Transcribe one file into subtitles (srt, vtt, lrc) or plain text (txt)."""
        options = {"model": model, "language": language, "enable_diarization": None}
        return await self._run(calls.transcribe_text(audio, response_format, **options))

    async def asr_models(self) -> dict[str, Any]:
        """``GET /v1/asr/models``: every speech-recognition model and which is the default."""
        return await self._run(calls.asr_models())

    async def stream(
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
    ) -> AsyncGenerator[StreamEvent, None]:
        """Stream audio over ``WS /ws/transcribe``; yield ready, partial, final, vad,
        failover, ack, resumed and reconnect events until the last final.

        ``source``: a file path, a numpy array at ``sample_rate``, or an (async) iterator
        of frames (PCM16 bytes or arrays at ``sample_rate``). A file or array goes as fast
        as the connection takes it, or at a microphone's pace with ``realtime``. After a
        dropped connection the client reconnects (up to ``reconnects`` times) and resumes
        the server session (``ack`` and ``resumed`` events come too); when it cannot, it
        replays the audio no final covered, from the last ``buffer_s`` seconds it keeps,
        into a new session.
        """
        blocks = audio_blocks(source, sample_rate=sample_rate, frame_ms=frame_ms, realtime=realtime)
        session = self.config.transcription_stream(path, language, reconnects, buffer_s)
        async with contextlib.aclosing(session.events(blocks)) as events:
            async for event in events:
                yield event

    # ------------------------------------------------------------------ TTS

    async def synthesize(self, text: str, **options: Unpack[SpeechOptions]) -> Synthesis:
        """Speak ``text`` (``POST /v1/tts/synthesize``): the audio and who made it.

        ``voice_id`` is a catalogue voice id, a speaker index of ``model``, or the id of
        a voice :meth:`clone_voice` made.
        """
        return await self._run(calls.synthesize(text, options))

    async def synthesize_stream(
        self, text: str, **options: Unpack[SpeechOptions]
    ) -> AsyncGenerator[bytes, None]:
        """Speak ``text`` and yield the audio in chunks as it is made (sentence by sentence)."""
        body = calls.synthesize_body(text, options, stream=True)
        try:
            async with self._http.stream(
                "POST", calls.SYNTHESIZE_PATH, json=body, headers=self.config.headers()
            ) as response:
                if response.status_code >= 400:
                    await response.aread()
                    calls.checked(response)
                async for chunk in response.aiter_bytes():
                    yield chunk
        except httpx.HTTPError as exc:
            raise calls.transport_error(exc, self.config.base_url) from exc

    async def compare_voices(
        self,
        text: str,
        candidates: Sequence[Candidate],
        *,
        metrics: Sequence[str] | None = None,
        format: AudioFormat | None = None,
        sample_rate: int | None = None,
    ) -> Comparison:
        """Several voices (or speeds) on one text, measured, with a recommendation."""
        return await self._run(
            calls.compare_voices(
                text, candidates, metrics=metrics, format=format, sample_rate=sample_rate
            )
        )

    async def fetch_audio(self, audio_url: str) -> bytes:
        """The audio behind an ``audio_url`` of a compare (or a JSON synthesis)."""
        return await self._run(calls.fetch_audio(audio_url))

    async def voices(self, **filters: Any) -> dict[str, Any]:
        """``GET /v1/tts/voices`` (``model``, ``gender``, ``mood``, ``language``, ``page``...)."""
        return await self._run(calls.voices(**filters))

    # ------------------------------------------------------------------ cloning

    async def clone_voice(
        self,
        audio: AudioFile,
        name: str,
        *,
        consent: bool,
        prompt_text: str | None = None,
        language: str | None = None,
    ) -> ClonedVoice:
        """A voice from a 3-10 s reference recording; speak with it by its ``voice_id``.

        ``consent`` must be true: the speaker agreed to be cloned. Without
        ``prompt_text`` the mesh transcribes the reference itself.
        """
        return await self._run(
            calls.clone_voice(
                audio, name, consent=consent, prompt_text=prompt_text, language=language
            )
        )

    async def cloned_voices(self) -> list[ClonedVoice]:
        """The cloned voices of this key."""
        return await self._run(calls.cloned_voices())

    async def delete_cloned_voice(self, voice_id: str) -> None:
        """Delete a cloned voice of this key."""
        await self._run(calls.delete_cloned_voice(voice_id))

    # ------------------------------------------------------------------ admin

    async def set_mode(self, mode: str) -> dict[str, Any]:
        """``POST /v1/admin/mode``: the STT routing mode (``gpu``, ``cpu``, ``auto``)."""
        return await self._run(calls.set_mode(mode))

    async def models(self) -> dict[str, Any]:
        """``GET /v1/admin/models``: every ASR and TTS model and its status per replica."""
        return await self._run(calls.models())

    async def load_model(
        self, model: str, *, replicas: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Load ``model`` on the replicas that hold it (or those of ``replicas``)."""
        chosen = list(replicas) if replicas is not None else None
        return await self._run(calls.model_action(model, "load", replicas=chosen))

    async def unload_model(
        self, model: str, *, force: bool = False, replicas: Sequence[str] | None = None
    ) -> dict[str, Any]:
        """Unload ``model``; ``force`` ends open sessions and allows the last STT model."""
        chosen = list(replicas) if replicas is not None else None
        return await self._run(calls.model_action(model, "unload", force=force, replicas=chosen))

    async def set_default_model(self, model: str) -> dict[str, Any]:
        """Make ``model`` the ASR model of requests that name none, on every gateway."""
        return await self._run(calls.model_action(model, "default"))

    async def reload_config(self) -> dict[str, Any]:
        """Re-read the run-time settings (mode, limits, keys file) on every gateway."""
        return await self._run(calls.reload_config())

    async def start_benchmark(
        self,
        kind: calls.BenchmarkKind = "stt",
        *,
        clients: int | None = None,
        clips: int | None = None,
        real_time: bool | None = None,
    ) -> dict[str, Any]:
        """Start a bounded benchmark of the live mesh; answers its id at once."""
        return await self._run(calls.start_benchmark(kind, clients, clips, real_time))

    async def benchmark_results(self, run_id: str | None = None) -> dict[str, Any]:
        """Every run (newest first), or one run's progress and, once done, its result."""
        return await self._run(calls.benchmark_results(run_id))

    async def wait_benchmark(
        self, run_id: str, *, poll_s: float = 1.0, timeout_s: float = 900.0
    ) -> dict[str, Any]:
        """Poll a run until it is completed or failed; TimeoutError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            run = await self.benchmark_results(run_id)
            if run.get("status") in calls.BENCHMARK_DONE:
                return run
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"benchmark {run_id} still {run.get('status')} after {timeout_s} s"
                )
            await asyncio.sleep(poll_s)

    # ------------------------------------------------------------------ status

    async def status(self) -> MeshStatus:
        """``GET /v1/admin/status``: services, replicas, mode, sessions, request stats."""
        return await self._run(calls.status())

    async def stream_status(self) -> AsyncGenerator[StatusEvent, None]:
        """``WS /v1/ws/status``: a ``status_update`` every interval and events as they
        happen (failovers, services up and down, mode changes), until you stop iterating."""
        url = self.config.ws_url(STATUS_PATH)
        async with contextlib.aclosing(status_events(url, self.config.headers(admin=True))) as feed:
            async for event in feed:
                yield event
