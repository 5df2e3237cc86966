"""The Chinese script of transcripts (voicemesh.stt.script)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from voicemesh.protocol import Segment, Word
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.script import convert_for_language, convert_text, result_postprocessor
from voicemesh.stt.types import TranscriptionResult

pytestmark = pytest.mark.unit

TRADITIONAL = "廣州市房地產中介協會分析"
SIMPLIFIED = "广州市房地产中介协会分析"


def _result(text: str, language: str) -> TranscriptionResult:
    words = [Word(word=ch, start=i / 5, end=(i + 1) / 5) for i, ch in enumerate(text)]
    return TranscriptionResult(
        text=text, language=language, segments=[Segment(start=0.0, end=2.0, text=text, words=words)]
    )


def test_both_directions_and_model_leaves_text_alone() -> None:
    assert convert_text(TRADITIONAL, "simplified") == SIMPLIFIED
    assert convert_text(SIMPLIFIED, "traditional") == TRADITIONAL
    assert convert_text(TRADITIONAL, "model") == TRADITIONAL
    assert convert_text("Mixed 廣州 text, 42.", "simplified") == "Mixed 广州 text, 42."
    assert convert_for_language(TRADITIONAL, "zh") == SIMPLIFIED
    assert convert_for_language(TRADITIONAL, "zh-TW", "traditional") == TRADITIONAL
    assert convert_for_language("東京都", "ja") == "東京都"


def test_postprocessor_rewrites_text_segments_and_words_of_chinese_only() -> None:
    convert = result_postprocessor("simplified")
    assert convert is not None
    out = convert(_result(TRADITIONAL, "zh"))
    assert out.text == SIMPLIFIED
    assert out.segments[0].text == SIMPLIFIED
    assert "".join(w.word for w in out.segments[0].words or []) == SIMPLIFIED
    assert out.segments[0].words is not None and out.segments[0].words[3].start == 0.6
    # Another language is returned untouched (Japanese kanji must not be "simplified").
    japanese = _result("東京都", "ja")
    assert convert(japanese) is japanese
    assert result_postprocessor("model") is None


class _Traditional:
    """A transcriber that answers in traditional characters (the scheduler's input)."""

    def transcribe(self, audio: np.ndarray, **kwargs: object) -> TranscriptionResult:
        return _result(TRADITIONAL, "zh")


def test_scheduler_applies_the_postprocessor_to_every_result() -> None:
    async def run() -> tuple[str, str]:
        plain = DecodeScheduler(_Traditional())  # type: ignore[arg-type]
        converted = DecodeScheduler(
            _Traditional(),  # type: ignore[arg-type]
            postprocess=result_postprocessor("simplified"),
        )
        audio = np.zeros(1600, np.float32)
        a = await plain.decode(audio, Priority.FINAL)
        b = await converted.decode(audio, Priority.PARTIAL)
        plain.close()
        converted.close()
        return a.text, b.text

    assert asyncio.run(run()) == (TRADITIONAL, SIMPLIFIED)
