"""The cloning engines behind one :class:`VoiceCloner` interface, and how one is chosen.

* :class:`GptSovitsCloner` (``voicemesh.clone.gptsovits``): the real zero-shot
  cloner, a GPT-SoVITS api_v2 server reached over HTTP.
* :class:`WorldAdaptedVits`: the CPU fallback; a stock VITS voice moved toward the
  reference with WORLD (see :mod:`voicemesh.clone.world`). Approximate, and every
  response says so.

An engine yields 16-bit mono PCM chunks at its ``sample_rate`` as it produces
them; the service encodes, streams and caches them.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from voicemesh.audio import float32_to_pcm16
from voicemesh.audio_files import read_audio_file
from voicemesh.clone.world import (
    AdaptStrength,
    SpeakerStats,
    adapt_toward,
    analyze_speaker,
    load_stats,
    save_stats,
    stats_path,
)
from voicemesh.errors import BadRequest

_LOGGER = logging.getLogger(__name__)


@dataclass(frozen=True)
class CloneRequest:
    """One synthesis in a cloned voice."""

    text: str
    """What to say."""
    language: str
    """Language of ``text``."""
    speed: float
    """Speaking rate (1.0: natural)."""
    reference_path: Path
    """The reference WAV as this service sees it."""
    reference_sha256: str
    """The reference's hash (its file name on the shared volume)."""
    prompt_text: str
    """What the reference says."""
    prompt_language: str
    """Language of the reference."""
    request_id: str = ""
    """For log lines."""


class SynthesisStream(Protocol):
    """Audio an engine is producing: its rate, then PCM16 chunks."""

    sample_rate: int

    def chunks(self) -> AsyncIterator[bytes]:
        """16-bit little-endian mono PCM, in order, as it is produced."""
        ...


class VoiceCloner(Protocol):
    """A zero-shot cloning engine."""

    name: str
    """Engine name, as ``X-VoiceMesh-Engine`` shows it."""
    model_version: str
    """Identifies the model; part of every cache key."""
    approximate: bool
    """True when the engine only approximates the reference speaker."""

    async def start(self, request: CloneRequest, streaming: bool) -> SynthesisStream:
        """Begin a synthesis; raises EngineUnavailable when it cannot serve now."""
        ...


class BaseVoice(Protocol):
    """A stock text-to-speech voice (the shared VITS engine satisfies it)."""

    sample_rate: int

    def synthesize(self, text: str, speed: float = 1.0) -> np.ndarray:
        """Float32 mono samples at ``sample_rate``."""
        ...

    def pieces(self, text: str, speed: float = 1.0) -> Iterator[np.ndarray]:
        """The same speech in pieces, the first one short, as they are made."""
        ...


CALIBRATION_TEXT = (
    "The quick brown fox jumps over the lazy dog. She sells sea shells by the sea shore, "
    "and the shells she sells are surely sea shells. How much wood would a woodchuck chuck?"
)
"""Speech the stock voice is described by, rich in vowels of every kind."""


@dataclass
class _PieceStream:
    """PCM of each piece as the worker thread renders it (the first one is ready)."""

    sample_rate: int
    first: bytes
    rest: Iterator[np.ndarray]

    async def chunks(self) -> AsyncIterator[bytes]:
        yield self.first
        while (audio := await asyncio.to_thread(next, self.rest, None)) is not None:
            yield float32_to_pcm16(audio)


@dataclass
class _WholeStream:
    sample_rate: int
    pcm: bytes
    chunk_bytes: int = 32768

    async def chunks(self) -> AsyncIterator[bytes]:
        for start in range(0, len(self.pcm), self.chunk_bytes):
            yield self.pcm[start : start + self.chunk_bytes]


class WorldAdaptedVits:
    """CPU fallback: VITS synthesis moved toward the reference speaker with WORLD."""

    name = "world_vits"
    approximate = True
    languages: tuple[str, ...] = ("en",)
    """What the stock voice can speak (the bundled Piper voice is English)."""

    def __init__(
        self,
        voice: BaseVoice,
        voice_name: str,
        strength: AdaptStrength | None = None,
        max_cached_speakers: int = 256,
    ) -> None:
        self.voice = voice
        self.sample_rate = voice.sample_rate
        self.strength = strength or AdaptStrength()
        s = self.strength
        self.model_version = f"{voice_name}+world:p{s.pitch:g}s{s.spread:g}w{s.warp:g}t{s.timbre:g}"
        self._source: SpeakerStats | None = None
        self._speakers: dict[str, SpeakerStats] = {}
        self._max_cached = max_cached_speakers
        self._lock = threading.Lock()

    @property
    def source(self) -> SpeakerStats:
        """The stock voice's own statistics (measured once, on calibration speech)."""
        with self._lock:
            if self._source is None:
                audio = self.voice.synthesize(CALIBRATION_TEXT)
                self._source = analyze_speaker(audio, self.sample_rate)
            return self._source

    def speaker(self, path: Path, digest: str) -> SpeakerStats:
        """The reference speaker's statistics, cached by audio hash in memory and beside
        the reference (where another replica, or this one after a restart, finds them)."""
        with self._lock:
            found = self._speakers.get(digest)
        if found is not None:
            return found
        saved = stats_path(path)
        stats = load_stats(saved)
        if stats is None:
            audio, rate = read_audio_file(path)
            stats = analyze_speaker(audio, rate)
            try:
                save_stats(stats, saved)
            except OSError as exc:  # a read-only volume: measured again next time
                _LOGGER.warning("could not keep the speaker statistics at %s: %s", saved, exc)
        with self._lock:
            if len(self._speakers) >= self._max_cached:
                self._speakers.pop(next(iter(self._speakers)))
            self._speakers[digest] = stats
        return stats

    def render(self, text: str, speed: float, path: Path, digest: str) -> np.ndarray:
        """Synthesise and adapt (blocking; call from a worker thread)."""
        target = self.speaker(path, digest)
        plain = self.voice.synthesize(text, speed)
        return adapt_toward(plain, self.sample_rate, self.source, target, self.strength)

    def render_pieces(
        self, text: str, speed: float, path: Path, digest: str
    ) -> Iterator[np.ndarray]:
        """Synthesise and adapt piece by piece (blocking; iterate in a worker thread).

        WORLD adapts each piece on its own; it works frame by frame, so the pieces
        sound as the whole would, and the first one is ready long before the whole.
        """
        target = self.speaker(path, digest)
        for plain in self.voice.pieces(text, speed):
            yield adapt_toward(plain, self.sample_rate, self.source, target, self.strength)

    async def start(self, request: CloneRequest, streaming: bool) -> SynthesisStream:
        """Render in a worker thread: streamed, piece by piece as each is ready (the first
        before answering, so a failure is still an error status); else the whole."""
        if request.language.split("-")[0].lower() not in self.languages:
            raise BadRequest(
                f"the CPU cloning engine speaks {', '.join(self.languages)} only, not "
                f"{request.language!r}; other languages need a GPT-SoVITS backend",
                code="unsupported_language",
            )
        if streaming:
            rest = self.render_pieces(
                request.text, request.speed, request.reference_path, request.reference_sha256
            )
            first = await asyncio.to_thread(next, rest, None)
            if first is not None:
                return _PieceStream(self.sample_rate, float32_to_pcm16(first), rest)
        audio = await asyncio.to_thread(
            self.render,
            request.text,
            request.speed,
            request.reference_path,
            request.reference_sha256,
        )
        return _WholeStream(self.sample_rate, float32_to_pcm16(audio))
