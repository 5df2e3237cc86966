"""OpenAI Realtime transcription sessions made with the official ``openai`` SDK.

``client.realtime.connect(extra_query={"intent": "transcription"})`` (the GA client),
a ``session.update`` of type ``transcription``, the audio as base64 PCM16
``input_audio_buffer.append`` events at real-time pace, then events are read until
every turn the server started has completed. Shared by the integration tests.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import openai

from voicemesh.audio import resample

CHUNK_S = 0.1
"""Audio per ``input_audio_buffer.append`` (100 ms, a voice agent's usual block)."""
COMPLETED = "conversation.item.input_audio_transcription.completed"
DELTA = "conversation.item.input_audio_transcription.delta"
SERVER_VAD = {"type": "server_vad"}
WAIT_S = 60.0


def sdk_client(base_url: str, key: str) -> openai.AsyncOpenAI:
    """The SDK pointed at a gateway (``base_url``: its ``http://host:port``).

    ``websocket_base_url`` too: the beta client would otherwise make it ``wss://``.
    """
    return openai.AsyncOpenAI(
        api_key=key,
        base_url=f"{base_url}/v1",
        websocket_base_url=base_url.replace("http://", "ws://") + "/v1",
        max_retries=0,
    )


def pcm16_base64(audio: np.ndarray) -> str:
    """Float samples in [-1, 1] as base64 16-bit little-endian PCM."""
    pcm = (np.clip(audio, -1.0, 1.0) * 32767).astype("<i2").tobytes()
    return base64.b64encode(pcm).decode()


@dataclass
class RealtimeResult:
    """The events a session brought back (as dicts), with times from the first audio sent."""

    events: list[tuple[float, dict[str, Any]]] = field(default_factory=list)
    sent_s: float = 0.0

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        """The events of one type, in order."""
        return [e for _, e in self.events if e.get("type") == kind]

    @property
    def transcript(self) -> str:
        """Every completed turn's transcript, joined."""
        return " ".join(e["transcript"] for e in self.of_type(COMPLETED) if e["transcript"])

    @property
    def errors(self) -> list[dict[str, Any]]:
        """The ``error`` events' ``error`` objects."""
        return [e["error"] for e in self.of_type("error")]

    def turns_done(self) -> bool:
        """At least one turn completed, and every turn the server started has."""
        completed = {e["item_id"] for e in self.of_type(COMPLETED)}
        started = {e["item_id"] for e in self.of_type("input_audio_buffer.speech_started")}
        committed = {e["item_id"] for e in self.of_type("input_audio_buffer.committed")}
        return bool(completed) and (started | committed) <= completed


async def transcribe(
    base_url: str,
    key: str,
    audio_16k: np.ndarray,
    *,
    rate: int = 24000,
    turn_detection: dict[str, Any] | None = SERVER_VAD,
    trailing_silence_s: float = 1.0,
    on_audio: Callable[[float, RealtimeResult], None] | None = None,
) -> RealtimeResult:
    """Stream ``audio_16k`` through ``WS /v1/realtime`` and read until every turn completed.

    ``turn_detection`` None: manual turns, committed once after the audio.
    ``on_audio(seconds_sent, result_so_far)`` is called after every append.
    """
    result = RealtimeResult()
    audio = np.concatenate([audio_16k, np.zeros(int(trailing_silence_s * 16000), np.float32)])
    audio = resample(audio, 16000, rate) if rate != 16000 else audio
    step = int(CHUNK_S * rate)
    client = sdk_client(base_url, key)
    async with client.realtime.connect(extra_query={"intent": "transcription"}) as conn:
        started = time.perf_counter()
        sent = asyncio.Event()
        done = asyncio.Event()

        async def read() -> None:
            async for event in conn:
                result.events.append((time.perf_counter() - started, event.to_dict()))
                if sent.is_set() and result.turns_done():
                    done.set()
            done.set()  # the server ended the session

        reader = asyncio.create_task(read())
        await conn.session.update(
            session={
                "type": "transcription",
                "audio": {
                    "input": {
                        "format": {"type": "audio/pcm", "rate": rate},  # type: ignore[typeddict-item]
                        "transcription": {"model": "whisper-1", "language": "en"},
                        "turn_detection": turn_detection,  # type: ignore[typeddict-item]
                    }
                },
            }
        )
        for offset in range(0, audio.size, step):
            await conn.input_audio_buffer.append(audio=pcm16_base64(audio[offset : offset + step]))
            result.sent_s = min(audio.size, offset + step) / rate
            if on_audio is not None:
                on_audio(result.sent_s, result)
            await asyncio.sleep(max(0.0, started + result.sent_s - time.perf_counter()))
        if turn_detection is None:
            await conn.input_audio_buffer.commit()
        sent.set()
        if result.turns_done():
            done.set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(done.wait(), WAIT_S)
        reader.cancel()
    return result
