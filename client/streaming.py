"""Stream audio to ``/ws/transcribe`` and collect what comes back, with timings.

Used by ``voicemesh-client stream``, by the benchmark and by the tests, so all
three measure the same thing the same way.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import websockets

from voicemesh.audio import OpusStreamEncoder, resample
from voicemesh.protocol import SAMPLE_RATE

WireEncoding = Literal["pcm_s16le", "pcm_f32le", "opus"]
OPUS_PACKET_MS = 20


@dataclass
class StreamResult:
    """Everything a session returned, with receive times relative to the first frame."""

    messages: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent_seconds: float = 0.0
    t0: float = 0.0
    sent: list[tuple[float, float, int]] = field(default_factory=list)
    """Send timeline: (send time, stream seconds of audio sent so far, bytes) per frame."""
    speech_seconds: float = 0.0
    """Seconds of the caller's audio, without the trailing silence added after it."""
    last_sent_at: float = 0.0
    """When the last audio frame left (relative to the first frame)."""

    def sent_at(self, stream_s: float) -> float | None:
        """When the frame holding stream time ``stream_s`` was sent (None: never sent)."""
        ends = [end for _, end, _ in self.sent]
        index = bisect.bisect_left(ends, stream_s - 1e-6)
        return self.sent[index][0] if index < len(self.sent) else None

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """Messages of one ``type``."""
        return [m for _, m in self.messages if m.get("type") == kind]

    def timed(self, kind: str) -> list[tuple[float, dict[str, Any]]]:
        """(receive time, message) pairs of one ``type``."""
        return [(t, m) for t, m in self.messages if m.get("type") == kind]

    @property
    def transcript(self) -> str:
        """All finals joined in order."""
        return " ".join(m["text"] for m in self.of_type("final") if m.get("text")).strip()


def to_bytes(audio: np.ndarray, encoding: Literal["pcm_s16le", "pcm_f32le"]) -> bytes:
    """Float32 samples as wire bytes in ``encoding``."""
    if encoding == "pcm_f32le":
        return audio.astype("<f4").tobytes()
    return (np.clip(audio, -1, 1) * 32767).astype("<i2").tobytes()


def wire_frames(
    audio: np.ndarray, sample_rate: int, encoding: WireEncoding, frame_ms: float
) -> Iterator[tuple[float, list[bytes]]]:
    """(stream seconds at the end of the frame, messages to send) per ``frame_ms`` of audio.

    PCM frames are one message each; Opus audio is resampled to 16 kHz and each
    ``frame_ms`` step sends the 20 ms packets it completed, one packet per message.
    """
    if encoding == "opus":
        audio = resample(audio, sample_rate, SAMPLE_RATE)
        sample_rate = SAMPLE_RATE
        encoder = OpusStreamEncoder(sample_rate=SAMPLE_RATE, frame_ms=OPUS_PACKET_MS)
    step = max(1, int(sample_rate * frame_ms / 1000))
    for i in range(0, audio.size, step):
        chunk = audio[i : i + step]
        end_s = (i + chunk.size) / sample_rate
        if encoding == "opus":
            packets = encoder.encode(chunk)
            if i + step >= audio.size:
                packets += encoder.flush()
            yield end_s, packets
        else:
            yield end_s, [to_bytes(chunk, encoding)]


async def stream_audio(
    url: str,
    audio: np.ndarray,
    *,
    sample_rate: int = SAMPLE_RATE,
    encoding: WireEncoding = "pcm_s16le",
    frame_ms: float = 40.0,
    realtime: bool = True,
    language: str | None = None,
    send_start: bool = True,
    trailing_silence_s: float = 1.5,
    end: Literal["stop", "flush", "none"] = "stop",
    timeout_s: float = 60.0,
    extra_headers: dict[str, str] | None = None,
    on_message: Callable[[float, dict[str, Any]], None] | None = None,
) -> StreamResult:
    """Stream ``audio`` (float32 at ``sample_rate``) in frames; return what came back.

    At real-time pace a frame is sent when its audio would have been captured, as a
    microphone would; ``trailing_silence_s`` of silence follows so the server can
    endpoint the last utterance by itself before ``end`` is sent.
    """
    silence = np.zeros(int(trailing_silence_s * sample_rate), dtype=np.float32)
    result = StreamResult(speech_seconds=audio.size / sample_rate)
    audio = np.concatenate([audio.astype(np.float32), silence])
    async with websockets.connect(
        url, max_size=None, additional_headers=extra_headers, compression=None
    ) as ws:
        ready = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
        result.messages.append((0.0, ready))
        if on_message is not None:
            on_message(0.0, ready)
        if send_start:
            rate = SAMPLE_RATE if encoding == "opus" else sample_rate
            await ws.send(
                json.dumps(
                    {
                        "type": "start",
                        "sample_rate": rate,
                        "encoding": encoding,
                        "language": language,
                    }
                )
            )
        t0 = time.perf_counter()
        result.t0 = t0

        async def receive() -> None:
            async for raw in ws:
                if isinstance(raw, str):
                    item = (time.perf_counter() - t0, json.loads(raw))
                    result.messages.append(item)
                    if on_message is not None:
                        on_message(*item)

        receiver = asyncio.create_task(receive())
        for end_s, messages in wire_frames(audio, sample_rate, encoding, frame_ms):
            if realtime:
                delay = end_s - (time.perf_counter() - t0)
                if delay > 0:
                    await asyncio.sleep(delay)
            for message in messages:
                await ws.send(message)
            sent_at = time.perf_counter() - t0
            result.sent.append((sent_at, end_s, sum(len(m) for m in messages)))
            result.last_sent_at = sent_at
        result.sent_seconds = audio.size / sample_rate
        if end == "stop":
            await ws.send(json.dumps({"type": "stop"}))
        elif end == "flush":
            await ws.send("<flush>")
        try:
            await asyncio.wait_for(receiver, timeout_s if end == "stop" else 3.0)
        except TimeoutError:
            receiver.cancel()
    return result
