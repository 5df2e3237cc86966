"""Client of a GPT-SoVITS api_v2 server: the real zero-shot cloning engine.

The server (PyPI ``gpt-sovits-cpufast``, console script ``gpt-sovits-api-v2``)
runs in its own container or virtual environment. This client only uses
``POST /tts`` (and ``GET /tts`` without text as a liveness probe, which the server
answers with a 400 before touching its model); its ``/control`` and
``set_*_weights`` routes are never called nor exposed.

The request carries ``ref_audio_path``: the reference's path on the volume the
server mounts, named by the audio's hash, so the server's prompt cache (keyed by
path) can never serve an older recording. A non-streaming reply is one WAV file;
a streaming reply is a WAV header chunk followed by raw 16-bit PCM. Both are read
by :class:`WavStreamReader`, so the sample rate is known before the first sample.

The server is not thread-safe (it synthesises on its event loop), so each backend
serves one request at a time: :class:`BackendQueue` holds one lock per backend
URL, a request takes the backend with the shortest queue and waits at most
``queue_timeout_s`` for it. Scaling is running more backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

import httpx

from voicemesh.clone.engines import CloneRequest
from voicemesh.errors import (
    BackendTimeout,
    BadRequest,
    EngineUnavailable,
    backend_errors,
)
from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)

TTS_PATH = "/tts"
LANGUAGES = (
    "auto",
    "auto_yue",
    "en",
    "zh",
    "ja",
    "yue",
    "ko",
    "all_zh",
    "all_ja",
    "all_yue",
    "all_ko",
)
"""Language codes a v2 GPT-SoVITS model accepts for ``text_lang`` / ``prompt_lang``."""
_HEADER_LIMIT = 4096


def backend_language(language: str) -> str:
    """The GPT-SoVITS language code for a VoiceMesh language (BadRequest if none)."""
    code = language.strip().lower().replace("-", "_")
    code = {"cmn": "zh", "zh_cn": "zh", "jp": "ja", "kr": "ko", "en_us": "en"}.get(code, code)
    if code not in LANGUAGES:
        raise BadRequest(
            f"GPT-SoVITS cannot speak language {language!r}; one of {', '.join(LANGUAGES)}",
            code="unsupported_language",
        )
    return code


def tts_payload(
    request: CloneRequest,
    ref_audio_path: str,
    *,
    streaming: bool,
    top_k: int = 15,
    temperature: float = 1.0,
) -> dict[str, object]:
    """The JSON body of ``POST /tts`` for one request."""
    return {
        "text": request.text,
        "text_lang": backend_language(request.language),
        "ref_audio_path": ref_audio_path,
        "prompt_text": request.prompt_text,
        "prompt_lang": backend_language(request.prompt_language),
        "speed_factor": request.speed,
        "top_k": top_k,
        "temperature": temperature,
        "text_split_method": "cut5",
        "media_type": "wav",
        "streaming_mode": streaming,
    }


class WavStreamReader:
    """Parses a WAV header off the front of a byte stream, then hands out PCM16 data."""

    def __init__(self) -> None:
        self._buffer = b""
        self.sample_rate: int | None = None
        self._remaining: int | None = None
        """Bytes of PCM left when the header gives a real size; None: until the end."""

    def feed(self, data: bytes) -> bytes:
        """Bytes in, PCM bytes out (empty until the header is complete)."""
        if self.sample_rate is None:
            self._buffer += data
            pcm = self._parse_header()
            if pcm is None:
                if len(self._buffer) > _HEADER_LIMIT:
                    raise EngineUnavailable(
                        "GPT-SoVITS sent no WAV header", code="backend_bad_audio"
                    )
                return b""
            data = pcm
        if self._remaining is not None:
            data = data[: self._remaining]
            self._remaining -= len(data)
        return data

    def _parse_header(self) -> bytes | None:
        buf = self._buffer
        if len(buf) < 12:
            return None
        if buf[:4] != b"RIFF" or buf[8:12] != b"WAVE":
            raise EngineUnavailable(
                "GPT-SoVITS answered with something that is not WAV", code="backend_bad_audio"
            )
        pos, rate, bits, channels = 12, None, None, None
        while pos + 8 <= len(buf):
            chunk_id = buf[pos : pos + 4]
            (size,) = struct.unpack("<I", buf[pos + 4 : pos + 8])
            body = pos + 8
            if chunk_id == b"data":
                if rate is None or bits != 16 or channels != 1:
                    raise EngineUnavailable(
                        f"GPT-SoVITS sent {bits}-bit {channels}-channel WAV; 16-bit mono expected",
                        code="backend_bad_audio",
                    )
                self.sample_rate = rate
                # Streaming headers carry a placeholder size: read to the end then.
                if 0 < size < 0x7FFFFFF0:
                    self._remaining = size
                self._buffer = b""
                return buf[body:]
            if body + size > len(buf):
                return None
            if chunk_id == b"fmt ":
                channels, rate = struct.unpack("<HI", buf[body + 2 : body + 8])
                (bits,) = struct.unpack("<H", buf[body + 14 : body + 16])
            pos = body + size + (size & 1)
        return None


@dataclass
class BackendQueue:
    """One lock per backend URL: a GPT-SoVITS server takes one request at a time."""

    queue_timeout_s: float
    locks: dict[str, asyncio.Lock] = field(default_factory=dict)
    waiting: dict[str, int] = field(default_factory=dict)

    def depth(self) -> int:
        """Requests waiting for or holding a backend."""
        return sum(self.waiting.values())

    def busy(self, url: str) -> bool:
        """True while a request holds ``url``."""
        lock = self.locks.get(url)
        return lock is not None and lock.locked()

    @contextlib.asynccontextmanager
    async def claim(self, urls: list[str]) -> AsyncIterator[str]:
        """Hold the least-queued backend of ``urls`` for one request."""
        if not urls:
            raise EngineUnavailable("no GPT-SoVITS backend is registered", code="no_backend")
        url = min(urls, key=lambda u: (self.waiting.get(u, 0), urls.index(u)))
        lock = self.locks.setdefault(url, asyncio.Lock())
        self.waiting[url] = self.waiting.get(url, 0) + 1
        try:
            try:
                await within(self.queue_timeout_s, lock.acquire())
            except TimeoutError as exc:
                raise BackendTimeout(
                    f"GPT-SoVITS backend {url} stayed busy for {self.queue_timeout_s:g} s",
                    code="backend_queue_timeout",
                ) from exc
            try:
                yield url
            finally:
                lock.release()
        finally:
            self.waiting[url] -= 1


class GptSovitsStream:
    """A reply being read from a GPT-SoVITS backend, holding the backend until closed."""

    def __init__(
        self,
        sample_rate: int,
        first: bytes,
        reader: WavStreamReader,
        body: AsyncIterator[bytes],
        close: Callable[[], object],
        *,
        url: str = "GPT-SoVITS",
    ) -> None:
        self.sample_rate = sample_rate
        self.url = url
        self._first = first
        self._reader = reader
        self._body = body
        self._close = close
        self._closed = False

    async def chunks(self) -> AsyncIterator[bytes]:
        """PCM16 chunks as the backend sends them."""
        try:
            carry = b""
            data = self._first
            while True:
                data = carry + data
                cut = len(data) - (len(data) % 2)  # never split a sample
                if cut:
                    yield data[:cut]
                carry = data[cut:]
                try:
                    with backend_errors(self.url, doing="read the rest of the reply of"):
                        raw = await anext(self._body)
                except StopAsyncIteration:
                    break
                data = self._reader.feed(raw)
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Release the response and the backend (idempotent)."""
        if not self._closed:
            self._closed = True
            result = self._close()
            if asyncio.iscoroutine(result):
                await result


class GptSovitsCloner:
    """The zero-shot engine: GPT-SoVITS api_v2 backends over HTTP, one request each at a time."""

    name = "gpt_sovits"
    approximate = False

    def __init__(
        self,
        backends: Callable[[], list[str]],
        *,
        model_version: str,
        backend_voices_dir: str,
        timeout_s: float,
        connect_timeout_s: float,
        queue_timeout_s: float,
    ) -> None:
        self.backends = backends
        self.model_version = model_version
        self.backend_voices_dir = backend_voices_dir
        self.timeout = httpx.Timeout(timeout_s, connect=connect_timeout_s)
        self.queue = BackendQueue(queue_timeout_s)
        self.client = httpx.AsyncClient(timeout=self.timeout)

    def reference_path(self, digest: str) -> str:
        """The reference's path as the backend sees the shared volume."""
        return str(PurePosixPath(self.backend_voices_dir) / f"{digest}.wav")

    async def close(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def start(self, request: CloneRequest, streaming: bool) -> GptSovitsStream:
        """Send the request to a free backend and read up to the first audio samples.

        Up to then a failure raises here and the service falls back to another engine;
        a streaming backend that sends its WAV header and then dies is caught too.
        """
        payload = tts_payload(
            request, self.reference_path(request.reference_sha256), streaming=streaming
        )
        # The backend stays claimed until the reply is read to the end (or abandoned):
        # the stack is handed to the stream, which closes it.
        stack = contextlib.AsyncExitStack()
        url = await stack.enter_async_context(self.queue.claim(self.backends()))
        try:
            target = f"{url}{TTS_PATH}"
            with backend_errors(target):
                req = self.client.build_request(
                    "POST", target, json=payload, headers={"X-Request-ID": request.request_id}
                )
                response = await self.client.send(req, stream=True)
                stack.push_async_callback(response.aclose)
            if response.status_code != 200:
                await response.aread()
                raise _backend_error(target, response)
            body = response.aiter_raw()
            reader = WavStreamReader()
            first = b""
            while reader.sample_rate is None or not first:
                try:
                    with backend_errors(target, doing="read the reply of"):
                        raw = await anext(body)
                except StopAsyncIteration as exc:
                    raise EngineUnavailable(
                        f"{target} ended its reply before any audio", code="backend_bad_audio"
                    ) from exc
                first += reader.feed(raw)
            _LOGGER.info(
                "request %s: GPT-SoVITS %s answering at %d Hz",
                request.request_id,
                url,
                reader.sample_rate,
            )
            return GptSovitsStream(
                reader.sample_rate, first, reader, body, stack.aclose, url=target
            )
        except BaseException:
            await stack.aclose()
            raise


async def probe_gptsovits(client: httpx.AsyncClient, url: str, timeout_s: float = 2.0) -> bool:
    """True when a server answers ``GET /tts`` without text with its 400 parameter error.

    The server checks parameters before it touches a model, so the probe costs
    nothing; a 5xx or no answer means it is down or not a GPT-SoVITS api_v2.
    """
    try:
        response = await client.get(
            f"{url}{TTS_PATH}", params={"text_lang": "en", "prompt_lang": "en"}, timeout=timeout_s
        )
    except httpx.HTTPError:
        return False
    return response.status_code == 400


def _backend_error(target: str, response: httpx.Response) -> EngineUnavailable:
    """A failed reply: the server's own message, as an error the service can fall back on."""
    try:
        body = response.json()
        message = f"{body.get('message', '')} {body.get('Exception', '')}".strip()
    except ValueError:
        message = response.text[:200]
    return EngineUnavailable(
        f"{target} answered {response.status_code}: {message}", code="backend_error"
    )
