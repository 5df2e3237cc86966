"""``voicemesh-client mic``: capture audio, stream it live, survive dropped connections.

A :class:`CaptureSource` yields 16 kHz mono float32 blocks: :class:`SoundDeviceSource`
reads a microphone through PortAudio (``sounddevice``); :class:`FileCaptureSource`
is the stand-in that reads a file at the pace a microphone would deliver it (tests,
machines without a microphone). :class:`MicStreamer` keeps the audio not yet covered
by a final in a :class:`SlidingBuffer`; when the connection drops it reconnects with
exponential backoff and resumes its server session (:mod:`voicemesh.client.resume`):
it sends the audio after what the gateway holds, and gets the finals it missed. If the
session cannot be resumed, it replays the audio no final covered into a new session and
shifts that session's times, so the transcript goes on where it stopped either way.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import websockets

from client.streaming import OPUS_PACKET_MS, StreamResult, WireEncoding, to_bytes
from voicemesh.audio import OpusStreamEncoder, resample
from voicemesh.audio_files import read_audio_file
from voicemesh.client.replay import Backoff, SlidingBuffer
from voicemesh.client.resume import ResumeState, open_session
from voicemesh.errors import ConnectionLost
from voicemesh.protocol import SAMPLE_RATE

_LOGGER = logging.getLogger(__name__)


class CaptureSource(Protocol):
    """Live audio: 16 kHz mono float32 blocks until the source ends or is closed."""

    def blocks(self) -> AsyncIterator[np.ndarray]:
        """Yield captured blocks as they arrive."""
        ...

    def close(self) -> None:
        """Stop capturing; ``blocks`` ends soon after."""
        ...


def list_input_devices() -> list[dict[str, Any]]:
    """Every PortAudio device with input channels (index, name, channels, default rate)."""
    import sounddevice

    devices = []
    for index, device in enumerate(sounddevice.query_devices()):
        if device["max_input_channels"] > 0:
            devices.append(
                {
                    "index": index,
                    "name": device["name"],
                    "channels": device["max_input_channels"],
                    "default_samplerate": device["default_samplerate"],
                }
            )
    return devices


class SoundDeviceSource:
    """A microphone through PortAudio (``sounddevice``), resampled to 16 kHz mono."""

    def __init__(self, device: int | str | None = None, block_ms: float = 40.0) -> None:
        import sounddevice

        info = sounddevice.query_devices(device, "input")
        self.rate = int(info["default_samplerate"])
        self.block = max(1, int(self.rate * block_ms / 1000))
        self._queue: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._loop = asyncio.get_running_loop()
        self._stream = sounddevice.InputStream(
            device=device,
            channels=1,
            samplerate=self.rate,
            blocksize=self.block,
            dtype="float32",
            callback=self._captured,
        )

    def _captured(self, data: np.ndarray, frames: int, when: Any, status: Any) -> None:
        if status:
            _LOGGER.warning("capture: %s", status)
        self._loop.call_soon_threadsafe(self._queue.put_nowait, data[:, 0].copy())

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        """Yield 16 kHz blocks from the microphone until closed."""
        self._stream.start()
        try:
            while (block := await self._queue.get()) is not None:
                yield resample(block, self.rate, SAMPLE_RATE)
        finally:
            self._stream.stop()
            self._stream.close()

    def close(self) -> None:
        """Stop the capture."""
        self._queue.put_nowait(None)


class FileCaptureSource:
    """Stand-in for a microphone: a file's audio, delivered block by block in real time."""

    def __init__(
        self,
        path: str,
        block_ms: float = 40.0,
        *,
        realtime: bool = True,
        trailing_silence_s: float = 1.5,
    ) -> None:
        audio, rate = read_audio_file(path)
        silence = np.zeros(int(trailing_silence_s * SAMPLE_RATE), dtype=np.float32)
        self.audio = np.concatenate([resample(audio, rate, SAMPLE_RATE), silence])
        self.speech_seconds = audio.size / rate
        """Length of the file itself (the added trailing silence excluded)."""
        self.block = max(1, int(SAMPLE_RATE * block_ms / 1000))
        self.realtime = realtime
        self._closed = False

    async def blocks(self) -> AsyncIterator[np.ndarray]:
        """Yield the file's blocks at the pace they would be captured."""
        t0 = time.perf_counter()
        for start in range(0, self.audio.size, self.block):
            if self._closed:
                return
            end = min(start + self.block, self.audio.size)
            if self.realtime:
                delay = end / SAMPLE_RATE - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            yield self.audio[start:end]

    def close(self) -> None:
        """Stop after the current block."""
        self._closed = True


@dataclass
class MicReport:
    """What a mic session produced: messages with continuous times, and its reconnects."""

    result: StreamResult = field(default_factory=StreamResult)
    reconnects: int = 0
    resumed: int = 0
    """Reconnects that carried the server session on (the rest began new ones)."""
    replayed_s: list[float] = field(default_factory=list)


class _Encoder:
    """Float32 16 kHz blocks -> wire messages in the session's encoding."""

    def __init__(self, encoding: WireEncoding) -> None:
        self.encoding = encoding
        self._opus = OpusStreamEncoder(frame_ms=OPUS_PACKET_MS) if encoding == "opus" else None

    def encode(self, block: np.ndarray) -> list[bytes]:
        if self._opus is not None:
            return self._opus.encode(block)
        if self.encoding == "pcm_f32le":
            return [to_bytes(block, "pcm_f32le")]
        return [to_bytes(block, "pcm_s16le")]

    def flush(self) -> list[bytes]:
        return self._opus.flush() if self._opus is not None else []


class MicStreamer:
    """Streams a :class:`CaptureSource` to ``/ws/transcribe``, reconnecting and resuming."""

    def __init__(
        self,
        url: str,
        source: CaptureSource,
        *,
        encoding: WireEncoding = "pcm_s16le",
        language: str | None = None,
        buffer_s: float = 30.0,
        backoff: Backoff | None = None,
        headers: dict[str, str] | None = None,
        on_message: Callable[[float, dict[str, Any]], None] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        self.url = url
        self.source = source
        self.encoding: WireEncoding = encoding
        self.language = language
        self.buffer = SlidingBuffer(buffer_s)
        self.backoff = backoff or Backoff()
        self.headers = headers
        self.on_message = on_message
        self.timeout_s = timeout_s
        self.report = MicReport()
        self._captured: asyncio.Queue[np.ndarray | None] = asyncio.Queue()
        self._capture_done = False
        self._finalized = 0  # absolute sample index every final so far has covered
        self.resume = ResumeState()
        self._t0 = 0.0

    async def _capture(self) -> None:
        try:
            async for block in self.source.blocks():
                self.buffer.append(block)
                await self._captured.put(block)
        finally:
            self._capture_done = True
            await self._captured.put(None)

    def _emit(self, message: dict[str, Any]) -> None:
        item = (time.perf_counter() - self._t0, message)
        self.report.result.messages.append(item)
        if self.on_message is not None:
            self.on_message(*item)

    async def run(self) -> MicReport:
        """Stream until the source ends (then ``stop``) or reconnecting gives up."""
        self._t0 = time.perf_counter()
        self.report.result.t0 = self._t0
        capture = asyncio.create_task(self._capture())
        delays = iter(self.backoff.delays())
        try:
            while True:
                try:
                    await self._session()
                    return self.report
                except (
                    OSError,
                    websockets.ConnectionClosed,
                    websockets.InvalidHandshake,
                    TimeoutError,
                    ConnectionLost,
                ) as exc:
                    delay = next(delays, None)
                    if delay is None:
                        raise ConnectionError(
                            f"gave up after {self.backoff.attempts} reconnects: {exc}"
                        ) from exc
                    _LOGGER.warning("connection lost (%s); reconnecting in %.1f s", exc, delay)
                    self._emit({"type": "reconnecting", "in_s": delay, "reason": str(exc)})
                    await asyncio.sleep(delay)
                    self.report.reconnects += 1
        finally:
            self.source.close()
            capture.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await capture

    async def _session(self) -> None:
        """One connection: replay what no final covered, then stream live until the end."""
        async with websockets.connect(
            self.url, max_size=None, open_timeout=self.timeout_s, additional_headers=self.headers
        ) as ws:
            ready = json.loads(await asyncio.wait_for(ws.recv(), self.timeout_s))
            if ready.get("type") != "ready":
                self._emit(ready)
                raise ConnectionLost(f"session refused: {ready.get('message', ready)}")
            self._emit(ready)
            start = {
                "type": "start",
                "sample_rate": SAMPLE_RATE,
                "encoding": self.encoding,
                "language": self.language,
            }
            new_origin = self.buffer.since(self._finalized)[0]
            resumed, early = await open_session(
                ws, self.resume, ready, start, origin=new_origin, timeout_s=self.timeout_s
            )
            for answer in early:
                self._emit(answer)
            if resumed is not None:
                self.report.resumed += 1
                self._emit(resumed)
            send_from = new_origin if resumed is None else self.resume.resumed_at(resumed)
            encoder = _Encoder(self.encoding)
            first, replay = self.buffer.since(send_from)
            # Live blocks already in the queue are in the replay too: skip them.
            while not self._captured.empty():
                if self._captured.get_nowait() is None:
                    self._capture_done = True
            if replay.size:
                if self.report.reconnects:
                    self.report.replayed_s.append(round(replay.size / SAMPLE_RATE, 3))
                size = 0
                for message in encoder.encode(replay):
                    await ws.send(message)
                    size += len(message)
                # Audio captured before the connection was ready goes out at once (all of
                # a file sent --fast): it counts as sent now.
                sent_to = (first + replay.size) / SAMPLE_RATE
                self.report.result.sent.append((time.perf_counter() - self._t0, sent_to, size))
            offset = self.resume.origin / SAMPLE_RATE
            receiver = asyncio.create_task(self._receive(ws, offset))
            try:
                while not self._capture_done:
                    block = await self._captured.get()
                    if receiver.done():
                        break
                    if block is None:
                        break
                    for message in encoder.encode(block):
                        await ws.send(message)
                    self.report.result.sent.append(
                        (
                            time.perf_counter() - self._t0,
                            self.buffer.end / SAMPLE_RATE,
                            block.size * 2,
                        )
                    )
                if receiver.done():
                    receiver.result()  # re-raises the close
                    raise ConnectionLost("the server closed the session")
                for message in encoder.flush():
                    await ws.send(message)
                self.report.result.last_sent_at = time.perf_counter() - self._t0
                self.report.result.sent_seconds = self.buffer.end / SAMPLE_RATE
                self.report.result.speech_seconds = getattr(
                    self.source, "speech_seconds", self.report.result.sent_seconds
                )
                await ws.send(json.dumps({"type": "stop"}))
                await asyncio.wait_for(asyncio.shield(receiver), self.timeout_s)
            finally:
                receiver.cancel()

    async def _receive(self, ws: Any, offset: float) -> None:
        """Print-and-keep every message with times shifted to the whole capture's clock."""
        async for raw in ws:
            if not isinstance(raw, str):
                continue
            message = json.loads(raw)
            for key in ("start", "end", "t"):
                if isinstance(message.get(key), int | float):
                    message[key] = round(message[key] + offset, 3)
            if message.get("type") == "final":
                if not self.resume.fresh_final(message):
                    continue  # sent again around a resume: already printed
                self._finalized = max(self._finalized, int(message["end"] * SAMPLE_RATE))
                self.buffer.drop_before(self._finalized)
            self._emit(message)
