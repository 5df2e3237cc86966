"""Wyoming calls made the way Home Assistant's Wyoming integration makes them.

Speech to text (``homeassistant/components/wyoming/stt.py``): ``transcribe`` with the
pipeline's language, ``audio-start`` (16 kHz, 16-bit, mono), the microphone's audio
as ``audio-chunk`` events, ``audio-stop``, then events are read until ``transcript``.
Text to speech (``tts.py``): ``synthesize`` with a voice name, or the streaming form
(``synthesize-start``, ``synthesize-chunk``..., ``synthesize``, ``synthesize-stop``)
read until ``synthesize-stopped``. Shared by the integration tests and
``benchmarks/wyoming_peers.py``; the client is the ``wyoming`` package's own.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from wyoming.asr import Transcribe, Transcript, TranscriptChunk
from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.client import AsyncTcpClient
from wyoming.error import Error
from wyoming.event import Event
from wyoming.tts import (
    Synthesize,
    SynthesizeChunk,
    SynthesizeStart,
    SynthesizeStop,
    SynthesizeStopped,
    SynthesizeVoice,
)

RATE = 16000
WIDTH = 2
CHANNELS = 1
CHUNK_SAMPLES = 1024
"""Samples per ``audio-chunk`` (64 ms at 16 kHz, a microphone's block)."""
READ_TIMEOUT_S = 60.0


def pcm16(audio: np.ndarray) -> bytes:
    """Float samples in [-1, 1] as 16-bit little-endian PCM."""
    return (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()


@dataclass
class WyomingTranscription:
    """What a transcription brought back, with times from the first audio sent."""

    events: list[tuple[float, Event]] = field(default_factory=list)
    text: str = ""
    context: dict[str, object] = field(default_factory=dict)
    stop_sent_at: float = 0.0
    transcript_at: float = 0.0

    @property
    def latency_s(self) -> float:
        """From ``audio-stop`` sent to ``transcript`` read."""
        return self.transcript_at - self.stop_sent_at

    def of_type(self, kind: str) -> list[Event]:
        """The events of one type, in order."""
        return [e for _, e in self.events if e.type == kind]

    @property
    def chunks(self) -> list[str]:
        """The texts of the ``transcript-chunk`` events."""
        return [TranscriptChunk.from_event(e).text for e in self.of_type("transcript-chunk")]

    @property
    def errors(self) -> list[Error]:
        """The ``error`` events."""
        return [Error.from_event(e) for e in self.of_type("error")]


async def transcribe(
    host: str,
    port: int,
    audio: np.ndarray,
    *,
    language: str | None = "en",
    rate: int = RATE,
    realtime: bool = True,
    trailing_silence_s: float = 0.0,
    on_audio: Callable[[float, WyomingTranscription], None] | None = None,
) -> WyomingTranscription:
    """Send ``audio`` (float mono at ``rate``) as Home Assistant does and read the answer.

    ``realtime`` paces the chunks like a microphone (and reads events while sending, as
    a streaming client does); otherwise they go as fast as the socket takes them.
    ``on_audio(seconds_sent, result_so_far)`` is called after every chunk.
    """
    result = WyomingTranscription()
    samples = np.concatenate([audio, np.zeros(int(trailing_silence_s * rate), np.float32)])
    data = pcm16(samples)
    step = CHUNK_SAMPLES * WIDTH * rate // RATE
    async with AsyncTcpClient(host, port) as client:
        started = time.perf_counter()

        async def read_until_transcript() -> None:
            while True:
                event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
                if event is None:
                    return
                now = time.perf_counter() - started
                result.events.append((now, event))
                if Transcript.is_type(event.type):
                    transcript = Transcript.from_event(event)
                    result.text = transcript.text
                    result.context = dict(transcript.context or {})
                    result.transcript_at = now
                    # A streaming server ends with transcript-stop; read it too.
                    if not result.of_type("transcript-start"):
                        return
                if event.type == "transcript-stop":
                    return

        await client.write_event(Transcribe(language=language).event())
        await client.write_event(AudioStart(rate=rate, width=WIDTH, channels=CHANNELS).event())
        reader = asyncio.create_task(read_until_transcript()) if realtime else None
        for offset in range(0, len(data), step):
            chunk = data[offset : offset + step]
            await client.write_event(
                AudioChunk(rate=rate, width=WIDTH, channels=CHANNELS, audio=chunk).event()
            )
            sent_s = (offset + len(chunk)) / (WIDTH * rate)
            if on_audio is not None:
                on_audio(sent_s, result)
            if realtime:
                await asyncio.sleep(max(0.0, started + sent_s - time.perf_counter()))
        await client.write_event(AudioStop().event())
        result.stop_sent_at = time.perf_counter() - started
        if reader is None:
            await read_until_transcript()
        else:
            await reader
    return result


@dataclass
class SpokenAudio:
    """The audio a synthesis brought back."""

    rate: int = 0
    audio: bytearray = field(default_factory=bytearray)
    utterances: int = 0
    """``audio-start`` ... ``audio-stop`` groups."""
    stopped: bool = False
    """``synthesize-stopped`` arrived (streaming)."""
    errors: list[Error] = field(default_factory=list)

    @property
    def samples(self) -> np.ndarray:
        """The audio as float mono."""
        return np.frombuffer(bytes(self.audio), dtype="<i2").astype(np.float32) / 32768.0


async def _read_audio(client: AsyncTcpClient, spoken: SpokenAudio, *, streaming: bool) -> None:
    while True:
        event = await asyncio.wait_for(client.read_event(), READ_TIMEOUT_S)
        if event is None:
            return
        if AudioStart.is_type(event.type):
            spoken.rate = AudioStart.from_event(event).rate
        elif AudioChunk.is_type(event.type):
            spoken.audio += AudioChunk.from_event(event).audio
        elif AudioStop.is_type(event.type):
            spoken.utterances += 1
            if not streaming:
                return
        elif SynthesizeStopped.is_type(event.type):
            spoken.stopped = True
            return
        elif Error.is_type(event.type):
            spoken.errors.append(Error.from_event(event))
            return


async def synthesize(host: str, port: int, text: str, voice: str | None = None) -> SpokenAudio:
    """``synthesize`` and its audio."""
    spoken = SpokenAudio()
    async with AsyncTcpClient(host, port) as client:
        await client.write_event(
            Synthesize(text=text, voice=SynthesizeVoice(name=voice) if voice else None).event()
        )
        await _read_audio(client, spoken, streaming=False)
    return spoken


async def synthesize_streaming(
    host: str, port: int, pieces: list[str], voice: str | None = None
) -> SpokenAudio:
    """The streaming form: ``pieces`` as ``synthesize-chunk`` events, audio until stopped."""
    spoken = SpokenAudio()
    wanted = SynthesizeVoice(name=voice) if voice else None
    async with AsyncTcpClient(host, port) as client:
        reader = asyncio.create_task(_read_audio(client, spoken, streaming=True))
        await client.write_event(SynthesizeStart(voice=wanted).event())
        for piece in pieces:
            await client.write_event(SynthesizeChunk(text=piece).event())
            await asyncio.sleep(0.05)
        await client.write_event(Synthesize(text="".join(pieces), voice=wanted).event())
        await client.write_event(SynthesizeStop().event())
        await reader
    return spoken
