"""What every speech-to-text engine shares: the ``Transcriber`` interface and its results.

An engine decodes one block of 16 kHz mono float32 audio into text with segment
times relative to the start of that block. Streaming, endpointing and scheduling
live elsewhere (:mod:`voicemesh.stt.streaming`), so an engine stays a plain,
synchronous, thread-safe callable that is easy to test on its own. The engines are
:mod:`voicemesh.stt.faster_whisper_engine` and :mod:`voicemesh.stt.openai_engine`;
:mod:`voicemesh.stt.engines` chooses and builds one.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

import numpy as np

from voicemesh.errors import BadRequest
from voicemesh.protocol import Segment

EngineName = Literal["faster-whisper", "openai-whisper"]
Device = Literal["cpu", "cuda", "auto"]
COMPRESSION_RATIO_LIMIT = 2.4


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
    compression_ratio: float = 1.0
    """zlib ratio of the text; Whisper's repetition loops compress far better than speech."""
    retried: bool = False
    """The fast decode looked broken (see :func:`suspicious`) and was redone on the full window."""


def suspicious(result: TranscriptionResult) -> bool:
    """A decode stuck in a loop or cut inside a character (low confidence alone is not retried:
    on the shared clips a full-window retry of such blocks changed nothing but cost
    a second decode)."""
    return (
        result.compression_ratio > COMPRESSION_RATIO_LIMIT
        or has_repetition_loop(result.text)
        or "\ufffd" in result.text  # stopped inside a character: a broken decode
    )


def has_repetition_loop(text: str, repeats: int = 4, cjk_repeats: int = 3) -> bool:
    """True when a word comes ``repeats`` times in a row (a CJK character ``cjk_repeats``).

    Short loops such as "上 上 上 上" or "您您您" compress too little for the
    compression ratio to notice them.
    """
    units = [u for u in re.findall(r"[\u3400-\u9fff]|[^\W_]+", text.lower()) if u]
    run = 1
    for previous, current in itertools.pairwise(units):
        run = run + 1 if current == previous else 1
        limit = cjk_repeats if re.fullmatch(r"[\u3400-\u9fff]", current) else repeats
        if run >= limit:
            return True
    return False


def compression_ratio(text: str) -> float:
    """How well ``text`` compresses (Whisper's hallucination signal; speech is below ~2.4)."""
    import zlib

    data = text.encode("utf-8")
    return len(data) / len(zlib.compress(data)) if data else 1.0


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
        quality_fallback: bool = True,
        prompt: str | None = None,
        segment_timestamps: bool = False,
    ) -> TranscriptionResult:
        """Decode ``audio``; ``prefix`` forces the start of the text.

        ``prompt`` is text said just before (earlier finals): Whisper reads it as
        context, as it does within a 30 s window offline. ``segment_timestamps`` asks
        for real segment times (subtitles) instead of one segment for the block.

        ``quality_fallback`` lets an engine spend more time when a fast decode looks
        like a hallucination (partials turn it off: they are revised anyway).
        """
        ...


def check_language(transcriber: Transcriber, language: str | None) -> str | None:
    """Normalise a language code and reject one the model cannot decode (400, not 500)."""
    if language is None or not language.strip():
        return None
    code = language.strip().lower()
    supported = getattr(transcriber, "languages", None)
    if supported and code not in supported:
        raise BadRequest(
            f"language {language!r} is not one this model knows; use an ISO 639-1 code "
            f"such as {', '.join(sorted(supported)[:8])}, ...",
            code="bad_language",
        )
    return code
