"""The ``Transcriber`` interface and the faster-whisper engine; choosing an engine.

An engine decodes one block of 16 kHz mono float32 audio into text with segment
times relative to the start of that block. Streaming, endpointing and scheduling
live elsewhere (:mod:`voicemesh.stt.streaming`), so an engine stays a plain,
synchronous, thread-safe callable that is easy to test on its own.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from voicemesh.errors import BadRequest, EngineUnavailable
from voicemesh.protocol import Segment, Word

_LOGGER = logging.getLogger(__name__)

EngineName = Literal["faster-whisper", "openai-whisper"]
Device = Literal["cpu", "cuda", "auto"]
SAMPLE_RATE = 16000


@dataclass
class TranscriptionResult:
    """Text and segments of one decoded block (times relative to the block start)."""

    text: str
    segments: list[Segment] = field(default_factory=list)
    language: str | None = None
    language_probability: float | None = None
    duration: float = 0.0
    no_speech_prob: float = 0.0
    avg_logprob: float = 0.0


@runtime_checkable
class Transcriber(Protocol):
    """Decodes a block of 16 kHz mono float32 audio; must be safe to call from threads."""

    engine: str
    model_name: str
    device: str

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prefix: str | None = None,
        word_timestamps: bool = False,
        beam_size: int | None = None,
    ) -> TranscriptionResult:
        """Decode ``audio``; ``prefix`` forces the start of the text (already committed)."""
        ...


def cuda_available() -> bool:
    """True when CTranslate2 sees at least one CUDA device."""
    try:
        import ctranslate2

        return int(ctranslate2.get_cuda_device_count()) > 0
    except Exception:
        return False


def resolve_device(device: Device) -> Literal["cpu", "cuda"]:
    """Turn ``auto`` into ``cuda`` when a CUDA device is present, else ``cpu``."""
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def default_compute_type(device: Literal["cpu", "cuda"]) -> str:
    """int8 on CPU, float16 on CUDA: the fastest types that keep Whisper's accuracy."""
    return "float16" if device == "cuda" else "int8"


def guess_engine(model: str, preferred: EngineName | None = None) -> EngineName:
    """Pick the engine for a model reference from its form and what is installed.

    A ``.pt`` checkpoint is an openai-whisper model; everything else (a CTranslate2
    folder, a bundled name, a hub name) is faster-whisper. An explicit preference
    wins when its library is installed.
    """
    if preferred is not None:
        module = "whisper" if preferred == "openai-whisper" else "faster_whisper"
        if importlib.util.find_spec(module) is None:
            raise BadRequest(
                f"engine {preferred!r} needs the python package "
                f"{'openai-whisper' if module == 'whisper' else 'faster-whisper'}",
                code="engine_not_installed",
            )
        return preferred
    if model.endswith((".pt", ".pth")):
        return "openai-whisper"
    return "faster-whisper"


class FasterWhisperTranscriber:
    """Whisper through faster-whisper / CTranslate2 (CPU int8 or CUDA float16)."""

    engine = "faster-whisper"

    def __init__(
        self,
        model_path: str,
        *,
        model_name: str | None = None,
        device: Device = "cpu",
        compute_type: str | None = None,
        cpu_threads: int = 0,
        num_workers: int = 1,
        beam_size: int = 1,
    ) -> None:
        from faster_whisper import WhisperModel

        resolved = resolve_device(device)
        self.device = resolved
        self.model_name = model_name or model_path
        self.compute_type = compute_type or default_compute_type(resolved)
        self.beam_size = beam_size
        try:
            self._model = WhisperModel(
                model_path,
                device=resolved,
                compute_type=self.compute_type,
                cpu_threads=cpu_threads,
                num_workers=num_workers,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise EngineUnavailable(
                f"cannot load faster-whisper model {model_path!r} on {resolved}: {exc}",
                code="model_load_failed",
            ) from exc
        self.multilingual = bool(self._model.model.is_multilingual)

    def transcribe(
        self,
        audio: np.ndarray,
        *,
        language: str | None = None,
        prefix: str | None = None,
        word_timestamps: bool = False,
        beam_size: int | None = None,
    ) -> TranscriptionResult:
        """Decode one block with greedy or beam search; no VAD, no previous-text context."""
        if not self.multilingual:
            language = "en"
        segments_iter, info = self._model.transcribe(
            np.ascontiguousarray(audio, dtype=np.float32),
            language=language,
            beam_size=beam_size or self.beam_size,
            prefix=prefix or None,
            word_timestamps=word_timestamps,
            condition_on_previous_text=False,
            vad_filter=False,
            # One temperature: fallbacks re-decode the block up to five times, which
            # multiplies latency for no gain on short streaming windows.
            temperature=0.0,
        )
        segments: list[Segment] = []
        texts: list[str] = []
        no_speech = []
        logprobs = []
        for seg in segments_iter:
            words = None
            if seg.words:
                words = [
                    Word(word=w.word, start=round(w.start, 3), end=round(w.end, 3),
                         probability=round(w.probability, 3))
                    for w in seg.words
                ]
            segments.append(
                Segment(start=round(seg.start, 3), end=round(seg.end, 3), text=seg.text.strip(),
                        words=words)
            )
            texts.append(seg.text)
            no_speech.append(seg.no_speech_prob)
            logprobs.append(seg.avg_logprob)
        return TranscriptionResult(
            text=_join_text(texts),
            segments=segments,
            language=info.language,
            language_probability=info.language_probability,
            duration=len(audio) / SAMPLE_RATE,
            no_speech_prob=max(no_speech) if no_speech else 1.0,
            avg_logprob=float(np.mean(logprobs)) if logprobs else -10.0,
        )


def _join_text(parts: list[str]) -> str:
    """Join Whisper segment texts, which carry their own leading spaces."""
    return " ".join("".join(parts).split())
