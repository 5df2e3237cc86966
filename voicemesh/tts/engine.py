"""The ``Synthesizer`` interface and what every engine shares (:class:`PooledSynthesizer`).

The engines themselves are :class:`~voicemesh.tts.sherpa.SherpaSynthesizer` (every
family on sherpa-onnx) and :class:`~voicemesh.tts.piper_runtime.PiperRuntimeSynthesizer`
(Piper voices on onnxruntime, as Piper itself runs them). Model libraries (and, for
Piper voices, ``piper``'s espeak-ng bridge) are imported only when an engine is built,
never at module import, so code that only needs the types (the gateway, unit tests)
does not load one.

Piper voices (and any model whose files name an ``espeak_voice``: Kokoro, Matcha):
sherpa-onnx 2.x has no espeak-ng of its own, so the text is phonemised here with the
espeak-ng that ``piper-tts`` ships (exactly the phonemes Piper itself would use) and
handed to sherpa-onnx as phoneme code points, one list per sentence. Lexicon models
(the Chinese VITS ones) use sherpa-onnx's own text front end.
"""

from __future__ import annotations

import abc
import logging
import queue
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from voicemesh.errors import BadRequest, Busy, EmptyText, ModelAssetError
from voicemesh.tts.joins import JOIN_LEAD_S, JOIN_PAUSE_S, trim_join
from voicemesh.tts.pool import EnginePool, PlaybackClock
from voicemesh.tts.text import (
    SENTENCE_END_CHARS,
    normalize_text,
    split_for_streaming,
    split_sentences,
)

_LOGGER = logging.getLogger(__name__)

ModelFamily = Literal["piper", "vits", "kokoro", "matcha"]
MIN_SPEED = 0.25
MAX_SPEED = 4.0
SENTENCE_PAUSE_S = 0.12
"""Silence after each sentence (scaled by 1/speed); none after a clause or the last one."""
# espeak-ng keeps one global voice and state per process: phonemise one text at a time.
_ESPEAK_LOCK = threading.Lock()
_ESPEAK: Any = None


@dataclass(frozen=True)
class SynthesisChunk:
    """Audio of one piece of text (a sentence, or the first clause when streaming)."""

    audio: np.ndarray
    """float32 mono samples in [-1, 1]."""
    sample_rate: int
    text: str
    index: int
    synthesis_s: float
    """Wall time spent synthesising this chunk (including waiting for a free engine)."""

    @property
    def duration_s(self) -> float:
        """Length of the chunk's audio in seconds."""
        return len(self.audio) / self.sample_rate


@dataclass
class SynthesisResult:
    """Audio of a whole text plus how long it took."""

    audio: np.ndarray
    """float32 mono samples in [-1, 1]."""
    sample_rate: int
    synthesis_s: float
    first_chunk_s: float
    """Time until the first sentence's audio was ready."""
    sentences: list[str] = field(default_factory=list)

    @property
    def duration_s(self) -> float:
        """Length of the audio in seconds."""
        return len(self.audio) / self.sample_rate

    @property
    def rtf(self) -> float:
        """Real-time factor: synthesis time over audio duration (lower is faster)."""
        return self.synthesis_s / self.duration_s if len(self.audio) else 0.0


@runtime_checkable
class Synthesizer(Protocol):
    """Text to speech: one voice model, maybe several speakers."""

    @property
    def sample_rate(self) -> int:
        """Native sample rate of the model's audio."""
        ...

    @property
    def num_speakers(self) -> int:
        """How many speaker ids the model accepts (0 .. num_speakers-1)."""
        ...

    def synthesize(self, text: str, *, speaker_id: int = 0, speed: float = 1.0) -> SynthesisResult:
        """The whole text as one block of audio."""
        ...

    def synthesize_chunks(
        self, text: str, *, speaker_id: int = 0, speed: float = 1.0
    ) -> Iterator[SynthesisChunk]:
        """The text piece by piece (first clause, then sentences), each as soon as it is ready."""
        ...


@dataclass(frozen=True)
class TtsModelFiles:
    """Where one sherpa-onnx TTS model's files are, and how to feed it text."""

    family: ModelFamily
    model: Path
    """The ONNX model (for Matcha: the acoustic model)."""
    tokens: Path
    espeak_voice: str | None = None
    """espeak-ng voice for Piper models (e.g. ``en-us``)."""
    data_dir: Path | None = None
    """espeak-ng data folder (Piper: phonemised here; Kokoro/Matcha: given to sherpa-onnx)."""
    lexicon: Path | None = None
    dict_dir: Path | None = None
    rule_fsts: tuple[Path, ...] = ()
    voices: Path | None = None
    """Kokoro's voices.bin."""
    vocoder: Path | None = None
    """Matcha's vocoder ONNX."""
    noise_scale: float = 0.667
    noise_scale_w: float = 0.8
    length_scale: float = 1.0

    def missing(self) -> list[Path]:
        """The files this model needs that are not on disk."""
        needed = [self.model, self.tokens]
        needed += [p for p in (self.lexicon, self.voices, self.vocoder) if p is not None]
        needed += list(self.rule_fsts)
        dirs = [p for p in (self.data_dir, self.dict_dir) if p is not None]
        return [p for p in needed if not p.is_file()] + [d for d in dirs if not d.is_dir()]


def _espeak() -> Any:
    """piper's espeak-ng phonemiser, initialised once per process (call under the lock)."""
    global _ESPEAK  # noqa: PLW0603 - espeak-ng itself is process-global
    if _ESPEAK is None:
        try:
            from piper.phonemize_espeak import EspeakPhonemizer
        except ImportError as exc:
            raise ModelAssetError(
                "Piper voices need espeak-ng from the PyPI package piper-tts; pip install piper-tts"
            ) from exc
        _ESPEAK = EspeakPhonemizer()
    return _ESPEAK


def phonemize_piper(text: str, voice: str) -> list[list[int]]:
    """espeak-ng phonemes of ``text`` as code points, one list per sentence (Piper's way)."""
    with _ESPEAK_LOCK:
        sentences = _espeak().phonemize(voice, text)
    return [[ord(ch) for ph in sentence for ch in ph] for sentence in sentences if sentence]


class PooledSynthesizer(abc.ABC):
    """The engine-independent part of a synthesizer: text checks, pieces, a pool of instances.

    One model instance must not run two generations at once, so each call borrows an
    instance from a pool of ``pool_size`` and gives it back: concurrent callers never
    share an instance, and at most ``pool_size`` generations run in parallel.

    The pool's instances use ``num_threads`` each, the right size when several
    requests share the cores. A piece generated while no other generation runs goes
    to a separate *solo* instance of ``solo_threads`` instead (when that is more than
    ``num_threads``): one request alone gets every core, and the latency of one
    request is not traded for the throughput of many.

    A subclass opens instances (:meth:`_open`), reads their rate and speakers
    (:meth:`_describe`) and generates one piece on one (:meth:`_speak`).
    """

    runtime = "?"
    """The inference library, for log lines and headers."""

    def __init__(
        self,
        files: TtsModelFiles,
        *,
        language: str = "en",
        num_threads: int = 2,
        pool_size: int = 1,
        solo_threads: int = 0,
        acquire_timeout_s: float | None = None,
    ) -> None:
        missing = files.missing()
        if missing:
            raise ModelAssetError(
                f"{files.family} model files are missing: {', '.join(map(str, missing))}"
            )
        if files.family == "piper" and not files.espeak_voice:
            raise ModelAssetError(f"Piper model {files.model} has no espeak voice set")
        if files.espeak_voice:
            phonemize_piper("warm up", files.espeak_voice)
        self.files = files
        self.language = language
        self.acquire_timeout_s = acquire_timeout_s
        started = time.monotonic()
        self._pool: EnginePool[Any] = EnginePool()
        first = self._open(num_threads)
        self._pool.put(first)
        for _ in range(pool_size - 1):
            self._pool.put(self._open(num_threads))
        self._solo: Any = self._open(solo_threads) if solo_threads > num_threads else None
        self._lock = threading.Lock()
        self._running = 0
        self._solo_busy = False
        self._solo_count = 0
        self._sample_rate, self._num_speakers = self._describe(first)
        _LOGGER.info(
            "loaded %s model %s on %s (%d Hz, %d speakers, pool %d x %d threads, solo %s) "
            "in %.1f s",
            files.family,
            files.model,
            self.runtime,
            self._sample_rate,
            self._num_speakers,
            pool_size,
            num_threads,
            f"{solo_threads} threads" if self._solo is not None else "off",
            time.monotonic() - started,
        )

    @abc.abstractmethod
    def _open(self, threads: int) -> Any:
        """A new model instance running on ``threads`` threads."""

    @abc.abstractmethod
    def _describe(self, instance: Any) -> tuple[int, int]:
        """(sample rate, number of speakers) of an instance."""

    @abc.abstractmethod
    def _speak(
        self,
        instance: Any,
        text: str,
        codepoints: list[list[int]] | None,
        speaker_id: int,
        speed: float,
    ) -> np.ndarray:
        """Audio of one piece on ``instance`` (``codepoints``: its espeak phonemes, if any)."""

    @property
    def sample_rate(self) -> int:
        """Native sample rate of the model's audio."""
        return self._sample_rate

    @property
    def num_speakers(self) -> int:
        """How many speaker ids the model accepts."""
        return self._num_speakers

    def _check(self, text: str, speaker_id: int, speed: float) -> str:
        """Normalised text, or BadRequest for empty text, a bad speaker or speed."""
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise BadRequest(
                f"speed must be between {MIN_SPEED} and {MAX_SPEED}, got {speed}", code="bad_speed"
            )
        if not 0 <= speaker_id < self._num_speakers:
            raise BadRequest(
                f"speaker id {speaker_id} is out of range: this model has "
                f"{self._num_speakers} speaker(s), ids 0..{self._num_speakers - 1}",
                code="bad_speaker",
            )
        clean = normalize_text(text, self.language)
        if not clean:
            raise EmptyText("text is empty")
        return clean

    def _generate(
        self, text: str, speaker_id: int, speed: float, *, deadline: float | None = None
    ) -> np.ndarray:
        """Audio of one piece of text, on a borrowed engine instance (``deadline``: when
        its listener needs it, see :class:`~voicemesh.tts.pool.EnginePool`)."""
        codepoints = None
        if self.files.espeak_voice:
            codepoints = phonemize_piper(text, self.files.espeak_voice)
            if not codepoints:
                return np.zeros(0, dtype=np.float32)
        instance, solo = self._borrow(deadline=deadline)
        try:
            return self._speak(instance, text, codepoints, speaker_id, speed)
        finally:
            self._give_back(instance, solo)

    @property
    def solo_generations(self) -> int:
        """How many pieces the solo instance has generated (0 when there is none)."""
        return self._solo_count

    def _borrow(self, *, deadline: float | None = None) -> tuple[Any, bool]:
        """An idle instance: the solo one when nothing else runs, else one from the pool."""
        with self._lock:
            if self._solo is not None and not self._solo_busy and self._running == 0:
                self._solo_busy = True
                self._running += 1
                self._solo_count += 1
                return self._solo, True
        try:
            tts = self._pool.get(timeout=self.acquire_timeout_s, deadline=deadline)
        except queue.Empty as exc:
            raise Busy("every synthesis engine stayed busy") from exc
        with self._lock:
            self._running += 1
        return tts, False

    def _give_back(self, tts: Any, solo: bool) -> None:
        with self._lock:
            self._running -= 1
            if solo:
                self._solo_busy = False
        if not solo:
            self._pool.put(tts)

    def _parts(
        self, piece: str, speaker_id: int, speed: float, *, split: bool, clock: PlaybackClock
    ) -> Iterator[tuple[np.ndarray, bool]]:
        """Audio of one piece as (part, is it the last) pairs, each as soon as it is made
        (engines borrowed by ``clock``'s deadline).

        Here the whole piece is one part. An engine that can make the start of a piece
        before the rest (:class:`~voicemesh.tts.piper_runtime.PiperRuntimeSynthesizer`)
        yields it first when ``split``.
        """
        yield self._generate(piece, speaker_id, speed, deadline=clock.deadline()), True

    def _streaming_pieces(self, clean: str) -> list[str]:
        """The pieces a streamed text is spoken in: the first clause alone when long enough."""
        return split_for_streaming(clean)

    def _pieces(
        self, pieces: list[str], speaker_id: int, speed: float, *, split_first: bool = False
    ) -> Iterator[SynthesisChunk]:
        pause = np.zeros(int(self._sample_rate * SENTENCE_PAUSE_S / speed), dtype=np.float32)
        after_cut = False
        index = 0
        clock = PlaybackClock()
        for number, piece in enumerate(pieces):
            more = number < len(pieces) - 1
            cut = more and piece[-1:] not in SENTENCE_END_CHARS
            first_part = True
            started = time.monotonic()
            parts = self._parts(
                piece, speaker_id, speed, split=split_first and number == 0, clock=clock
            )
            for part, last in parts:
                audio = part
                start_s = JOIN_LEAD_S / speed if after_cut and first_part else None
                end_s = JOIN_PAUSE_S / speed if cut and last else None
                if start_s is not None or end_s is not None:
                    audio = trim_join(audio, self._sample_rate, start_s=start_s, end_s=end_s)
                elif last and more and not after_cut:
                    audio = np.concatenate([audio, pause])
                clock.handed_out(len(audio) / self._sample_rate)
                yield SynthesisChunk(
                    audio=audio,
                    sample_rate=self._sample_rate,
                    text=piece,
                    index=index,
                    synthesis_s=time.monotonic() - started,
                )
                index += 1
                first_part = False
                started = time.monotonic()
            after_cut = cut

    def synthesize_chunks(
        self, text: str, *, speaker_id: int = 0, speed: float = 1.0
    ) -> Iterator[SynthesisChunk]:
        """The text piece by piece, each as soon as it is ready: a short first piece (the
        first clause, or the start of the first sentence's audio), then sentences."""
        clean = self._check(text, speaker_id, speed)
        return self._pieces(self._streaming_pieces(clean), speaker_id, speed, split_first=True)

    def synthesize(self, text: str, *, speaker_id: int = 0, speed: float = 1.0) -> SynthesisResult:
        """The whole text, sentence by sentence, joined into one block of audio."""
        clean = self._check(text, speaker_id, speed)
        sentences = split_sentences(clean)
        started = time.monotonic()
        first = 0.0
        parts: list[np.ndarray] = []
        for chunk in self._pieces(sentences, speaker_id, speed):
            if not parts:
                first = time.monotonic() - started
            parts.append(chunk.audio)
        audio = np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)
        return SynthesisResult(
            audio=audio,
            sample_rate=self._sample_rate,
            synthesis_s=time.monotonic() - started,
            first_chunk_s=first,
            sentences=sentences,
        )
