"""One Chinese script in transcripts: Whisper's ``zh`` mixes them.

Whisper has a single language token for Chinese and writes simplified or
traditional characters by chance, sometimes both in one utterance (on the shared
AISHELL clip, Mandarin read in Beijing, base writes 廣州市 for 广州市). A user
gets one script: simplified by default, traditional, or what the model wrote.
The conversion is OpenCC's phrase-aware table, applied to the text, the segments
and the words of every result whose language is Chinese.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Literal

from voicemesh.protocol import Segment, Word
from voicemesh.stt.types import TranscriptionResult

ChineseScript = Literal["simplified", "traditional", "model"]
"""``model`` leaves Whisper's characters as they came."""

_CONFIGS = {"simplified": "t2s", "traditional": "s2t"}


@functools.lru_cache(maxsize=2)
def _converter(script: str) -> Callable[[str], str]:
    import opencc

    return opencc.OpenCC(_CONFIGS[script]).convert


def convert_text(text: str, script: ChineseScript) -> str:
    """``text`` in ``script`` (characters outside Chinese are left alone)."""
    if script == "model" or not text:
        return text
    return _converter(script)(text)


def is_chinese(language: str | None) -> bool:
    """True for Whisper's ``zh`` (and regional tags such as ``zh-TW``)."""
    return (language or "").lower().startswith("zh")


def convert_for_language(
    text: str, language: str | None, script: ChineseScript = "simplified"
) -> str:
    """``text`` in ``script`` when ``language`` is Chinese; other languages unchanged."""
    return convert_text(text, script) if is_chinese(language) else text


def result_postprocessor(
    script: ChineseScript,
) -> Callable[[TranscriptionResult], TranscriptionResult] | None:
    """A function that rewrites Chinese results into ``script``; None for ``model``."""
    if script == "model":
        return None
    _converter(script)  # fail at start-up, not on the first Mandarin utterance

    def convert(result: TranscriptionResult) -> TranscriptionResult:
        if not is_chinese(result.language):
            return result
        segments = [
            Segment(
                start=s.start,
                end=s.end,
                text=convert_text(s.text, script),
                words=[
                    Word(
                        word=convert_text(w.word, script),
                        start=w.start,
                        end=w.end,
                        probability=w.probability,
                    )
                    for w in s.words
                ]
                if s.words is not None
                else None,
                avg_logprob=s.avg_logprob,
            )
            for s in result.segments
        ]
        return dataclasses.replace(
            result, text=convert_text(result.text, script), segments=segments
        )

    return convert
