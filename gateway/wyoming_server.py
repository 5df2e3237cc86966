"""The gateway's Wyoming server: Home Assistant's speech protocol on its own TCP port.

Wyoming (JSON-lines events with binary payloads over TCP) has no authentication by
design. The server binds to loopback by default (``wyoming_host``), and serves only
clients whose address is in ``wyoming_allowed_networks`` (:func:`client_allowed`);
anyone else gets one ``error`` event (``forbidden``) and the connection is closed.

Each connection is a :class:`WyomingConnection`; the protocol work is in small
modules over the gateway's existing cores: :mod:`gateway.wyoming_info` (``describe``),
:mod:`gateway.wyoming_asr` (``transcribe`` and audio, over the streaming-session
core), :mod:`gateway.wyoming_tts` (``synthesize``, over the TTS routing). An event
that is not valid JSON, lacks what its type needs, comes out of order or is of a
type the server does not serve gets an ``error`` event; the connection goes on
(one too large to read ends it) and the server stays up.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Iterable
from ipaddress import IPv4Network, IPv6Network, ip_address

from wyoming.asr import Transcribe
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.error import Error
from wyoming.event import Event, async_write_event
from wyoming.info import Describe
from wyoming.ping import Ping, Pong
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

from gateway.asr_models import check_model
from gateway.auth import SessionSlot
from gateway.keys import Principal
from gateway.limits import Refusal
from gateway.session_client import new_session_id
from gateway.state import GatewayState
from gateway.stream import GatewayStream
from gateway.wyoming_asr import WyomingAudioFormat, WyomingTranscription, wyoming_language
from gateway.wyoming_info import describe_mesh, installed_voice_list
from gateway.wyoming_tts import SentenceBuffer, pick_voice, speak
from voicemesh.errors import (
    BadEvent,
    BadRequest,
    Forbidden,
    IdleTimeout,
    PayloadTooLarge,
    VoiceMeshError,
)
from voicemesh.tasks import within

_LOGGER = logging.getLogger(__name__)

Network = IPv4Network | IPv6Network


def client_allowed(host: str, networks: Iterable[Network]) -> bool:
    """Whether a client at ``host`` (its IP, as the socket reports it) may connect.

    An IPv4 client seen through an IPv6 socket (``::ffff:10.0.0.5``) counts as its
    IPv4 address; a scope (``fe80::1%eth0``) is ignored; anything that is not an IP
    address is refused.
    """
    try:
        address = ip_address(host.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    if mapped is not None:
        address = mapped
    return any(address.version == net.version and address in net for net in networks)


def refusal(refused: Refusal | None) -> None:
    """Raise the limit a new session or synthesis is over (``busy``, ``rate_limited``)."""
    if refused is not None:
        message = f"{refused.message}; retry after {refused.retry_after} s"
        raise VoiceMeshError(message, code=refused.code)


async def read_event(reader: asyncio.StreamReader, max_bytes: int) -> Event | None:
    """The next event, None at the end of the stream; BadEvent (line skipped) or
    PayloadTooLarge (the stream cannot be followed any more)."""
    line = await reader.readline()
    if not line:
        return None
    try:
        header = json.loads(line)
    except ValueError as exc:
        raise BadEvent("an event header must be one line of JSON") from exc
    if not isinstance(header, dict) or not isinstance(header.get("type"), str):
        raise BadEvent("an event header must be a JSON object with a 'type'")
    data = header.get("data") or {}
    data_length = int(header.get("data_length") or 0)
    payload_length = int(header.get("payload_length") or 0)
    if data_length < 0 or payload_length < 0 or data_length + payload_length > max_bytes:
        raise PayloadTooLarge(
            f"event of {data_length + payload_length} bytes is over the limit of {max_bytes}"
        )
    if data_length:
        extra = await reader.readexactly(data_length)
        try:
            data = {**data, **json.loads(extra)}
        except (ValueError, TypeError) as exc:
            raise BadEvent(f"the data of a {header['type']!r} event is not a JSON object") from exc
    if not isinstance(data, dict):
        raise BadEvent(f"the data of a {header['type']!r} event is not a JSON object")
    payload = await reader.readexactly(payload_length) if payload_length else None
    return Event(type=header["type"], data=data, payload=payload)


class WyomingConnection:
    """One Wyoming client: reads its events in order and answers each."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        state: GatewayState,
        peer: str,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.state = state
        self.peer = peer
        self.principal = Principal(key_id=f"wyoming:{peer}", admin=False)
        """Limits are booked per client address (Wyoming carries no key)."""
        self._write_lock = asyncio.Lock()
        self._transcribe: Transcribe | None = None
        self._transcription: WyomingTranscription | None = None
        self._session: asyncio.Task[None] | None = None
        self._text_stream: SentenceBuffer | None = None
        self._stream_voice: SynthesizeVoice | None = None

    async def write(self, event: Event) -> None:
        """Send one event whole (the session core and this loop both write)."""
        async with self._write_lock:
            with contextlib.suppress(ConnectionError):
                await async_write_event(event, self.writer)

    async def error(self, exc: VoiceMeshError) -> None:
        """An ``error`` event for ``exc``; the connection goes on."""
        _LOGGER.info("wyoming %s: %s: %s", self.peer, exc.code, exc.message)
        self.state.metrics.error(exc.code)
        await self.write(Error(text=exc.message, code=exc.code).event())

    async def run(self) -> None:
        """Serve events until the client goes away (or sends one too large to follow)."""
        max_bytes = self.state.settings.wyoming_max_event_bytes
        idle_s = self.state.settings.idle_session_s  # a silent client's connection is closed
        try:
            while True:
                try:
                    event = await within(idle_s, read_event(self.reader, max_bytes))
                except TimeoutError:
                    await self.error(IdleTimeout(f"no event for {idle_s:g} s; connection closed"))
                    return
                except BadEvent as exc:
                    await self.error(exc)
                    continue
                except PayloadTooLarge as exc:
                    await self.error(exc)
                    return
                if event is None:
                    return
                try:
                    await self.handle(event)
                except VoiceMeshError as exc:
                    await self.error(exc)
                except (KeyError, TypeError, ValueError) as exc:
                    await self.error(BadEvent(f"bad {event.type!r} event: {exc!r}"))
                except Exception:
                    # A bug must cost this request, not the connection or the server.
                    _LOGGER.exception("wyoming %s: %s failed", self.peer, event.type)
                    await self.error(VoiceMeshError(f"the server failed on a {event.type!r} event"))
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            _LOGGER.info("wyoming %s: connection lost: %s", self.peer, exc)
        finally:
            await self._end_transcription(wait=False)

    async def handle(self, event: Event) -> None:
        """Answer one event."""
        kind = event.type
        if Describe.is_type(kind):
            info = await describe_mesh(self.state, new_session_id())
            await self.write(info.event())
        elif Ping.is_type(kind):
            await self.write(Pong(text=Ping.from_event(event).text).event())
        elif Transcribe.is_type(kind):
            self._on_transcribe(Transcribe.from_event(event))
        elif AudioStart.is_type(kind):
            await self._on_audio_start(AudioStart.from_event(event))
        elif AudioChunk.is_type(kind):
            await self._on_audio_chunk(AudioChunk.from_event(event))
        elif AudioStop.is_type(kind):
            await self._on_audio_stop()
        elif Synthesize.is_type(kind):
            if self._text_stream is None:  # inside a stream it only repeats the chunks
                synthesize = Synthesize.from_event(event)
                await self._speak(synthesize.text, synthesize.voice)
        elif SynthesizeStart.is_type(kind):
            self._text_stream = SentenceBuffer()
            self._stream_voice = SynthesizeStart.from_event(event).voice
        elif SynthesizeChunk.is_type(kind):
            await self._on_text_chunk(SynthesizeChunk.from_event(event).text)
        elif SynthesizeStop.is_type(kind):
            await self._on_text_stop()
        else:
            raise BadRequest(
                f"event type {kind!r} is not served here (this server speaks describe, transcribe, "
                "audio-start/chunk/stop, synthesize, synthesize-start/chunk/stop and ping)",
                code="unsupported_event",
            )

    # ------------------------------------------------------------ speech to text

    def _on_transcribe(self, transcribe: Transcribe) -> None:
        if transcribe.name:
            check_model(transcribe.name, self.state.view.snapshot(include_held=True))
        self._transcribe = transcribe

    async def _on_audio_start(self, start: AudioStart) -> None:
        if self._transcription is not None:
            raise BadEvent("audio-start while a transcription is open: send audio-stop first")
        fmt = WyomingAudioFormat(start.rate, start.width, start.channels)
        fmt.check()
        transcribe, self._transcribe = self._transcribe, None
        refused = self.state.limits.admit_session(self.principal.limit_key)
        if refused is not None:
            raise VoiceMeshError(
                f"{refused.message}; retry after {refused.retry_after} s", code=refused.code
            )
        slot = SessionSlot(self.state, self.principal)
        session_id = new_session_id()
        transcription = WyomingTranscription(
            self.write,
            fmt,
            session_id=session_id,
            language=wyoming_language(transcribe.language if transcribe else None),
            max_frame_bytes=self.state.settings.max_frame_bytes,
            metrics=self.state.metrics,
        )
        model = transcribe.name if transcribe else None
        stream = GatewayStream(transcription, self.state, session_id, model)
        self._transcription = transcription
        self._session = asyncio.create_task(self._transcribe_session(stream, transcription, slot))

    async def _transcribe_session(
        self, stream: GatewayStream, transcription: WyomingTranscription, slot: SessionSlot
    ) -> None:
        async with slot:
            try:
                await stream.run()
            finally:
                transcription.hang_up()
        if stream.stopping:
            await transcription.finish()

    async def _on_audio_chunk(self, chunk: AudioChunk) -> None:
        transcription = self._transcription
        if transcription is None:
            raise BadEvent("audio-chunk before audio-start")
        fmt = transcription.format
        if (chunk.rate, chunk.width, chunk.channels) != (fmt.rate, fmt.width, fmt.channels):
            raise BadEvent(
                f"audio-chunk format ({chunk.rate} Hz, {chunk.width} bytes, {chunk.channels} "
                f"channels) differs from audio-start's ({fmt.rate}, {fmt.width}, {fmt.channels})"
            )
        await transcription.feed(chunk.audio)

    async def _on_audio_stop(self) -> None:
        transcription = self._transcription
        if transcription is None:
            raise BadEvent("audio-stop without audio-start")
        await transcription.stop()
        await self._end_transcription(wait=True)
        if transcription.failed:
            # The client got the error; without a transcript to wait for, Home Assistant
            # learns that the request failed from the end of the connection.
            self.writer.close()

    async def _end_transcription(self, *, wait: bool) -> None:
        """Wait for the transcript (after audio-stop), or drop the session (client gone)."""
        transcription, session = self._transcription, self._session
        self._transcription = self._session = None
        if transcription is None or session is None:
            return
        if not wait:
            transcription.hang_up()
        with contextlib.suppress(asyncio.CancelledError):
            await session

    # ------------------------------------------------------------ text to speech

    async def _speak(self, text: str, voice: SynthesizeVoice | None) -> None:
        request_id = new_session_id()
        refused = self.state.limits.admit_request(self.principal.limit_key)
        if refused is not None:
            raise VoiceMeshError(
                f"{refused.message}; retry after {refused.retry_after} s", code=refused.code
            )
        by_language = voice is not None and not voice.name and bool(voice.language)
        voices = await installed_voice_list(self.state, request_id) if by_language else []
        started = time.perf_counter()
        backend = await speak(self.state, self.write, text, pick_voice(voice, voices), request_id)
        _LOGGER.info(
            "wyoming %s: spoke %d chars via %s in %.0f ms",
            self.peer,
            len(text),
            backend,
            (time.perf_counter() - started) * 1000,
        )

    async def _on_text_chunk(self, text: str) -> None:
        if self._text_stream is None:
            raise BadEvent("synthesize-chunk before synthesize-start")
        for sentence in self._text_stream.add(text):
            await self._speak(sentence, self._stream_voice)

    async def _on_text_stop(self) -> None:
        if self._text_stream is None:
            raise BadEvent("synthesize-stop before synthesize-start")
        rest = self._text_stream.rest()
        voice, self._text_stream, self._stream_voice = self._stream_voice, None, None
        if rest:
            await self._speak(rest, voice)
        await self.write(SynthesizeStopped().event())


class WyomingServer:
    """The TCP listener: admits clients from the allowed networks, one connection each."""

    def __init__(self, state: GatewayState) -> None:
        self.state = state
        self.settings = state.settings
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    @property
    def address(self) -> str | None:
        """``tcp://host:port`` the server listens on (None before :meth:`start`)."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        host = f"[{host}]" if ":" in host else host
        return f"tcp://{host}:{port}"

    async def start(self) -> None:
        """Listen on ``wyoming_host:wyoming_port`` (OSError when the port is taken)."""
        self._server = await asyncio.start_server(
            self._accept, self.settings.wyoming_host, self.settings.wyoming_port
        )

    async def stop(self) -> None:
        """Stop listening and end every connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._connections.add(task)
        peer_info = writer.get_extra_info("peername")
        peer = str(peer_info[0]) if peer_info else "?"
        try:
            if not client_allowed(peer, self.settings.wyoming_allowed_networks):
                exc = Forbidden(
                    f"client {peer} is not in this server's allowed networks "
                    "(VOICEMESH_GATEWAY_WYOMING_ALLOWED_NETWORKS); Wyoming has no authentication"
                )
                _LOGGER.warning("wyoming: refused %s: not in the allowed networks", peer)
                self.state.metrics.error(exc.code)
                with contextlib.suppress(ConnectionError):
                    await async_write_event(Error(text=exc.message, code=exc.code).event(), writer)
                return
            _LOGGER.info("wyoming: client %s connected", peer)
            await WyomingConnection(reader, writer, self.state, peer).run()
        except Exception:
            _LOGGER.exception("wyoming: connection from %s failed", peer)
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()
            if task is not None:
                self._connections.discard(task)
