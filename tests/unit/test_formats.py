"""Transcript response formats, checked character by character."""

from __future__ import annotations

import json

import pytest

from voicemesh.errors import BadRequest
from voicemesh.protocol import Segment, Word
from voicemesh.stt.formats import (
    RESPONSE_FORMATS,
    lrc_timestamp,
    render_transcript,
    srt_timestamp,
    vtt_timestamp,
)
from voicemesh.stt.types import TranscriptionResult

pytestmark = pytest.mark.unit


@pytest.fixture
def two_segments() -> TranscriptionResult:
    """Two segments, the second past one hour, with words on the first."""
    return TranscriptionResult(
        text=" Ask not what your country can do for you. Ask what you can do.",
        segments=[
            Segment(
                start=0.0,
                end=2.5,
                text=" Ask not what your country can do for you.",
                words=[
                    Word(word=" Ask", start=0.0, end=0.4, probability=0.9),
                    Word(word=" not", start=0.4, end=0.8),
                ],
                avg_logprob=-0.25,
            ),
            Segment(start=3661.5, end=3663.25, text=" Ask what\n you can do."),
        ],
        language="en",
        duration=3663.25,
    )


@pytest.fixture
def empty() -> TranscriptionResult:
    """What an engine returns for silence."""
    return TranscriptionResult(text="", segments=[], language="en", duration=1.5)


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt", "lrc"),
    [
        (0.0, "00:00:00,000", "00:00:00.000", "[00:00.00]"),
        (2.5, "00:00:02,500", "00:00:02.500", "[00:02.50]"),
        (59.9996, "00:01:00,000", "00:01:00.000", "[01:00.00]"),
        (61.004, "00:01:01,004", "00:01:01.004", "[01:01.00]"),
        (3661.5, "01:01:01,500", "01:01:01.500", "[61:01.50]"),
        (36000 * 10 + 0.001, "100:00:00,001", "100:00:00.001", "[6000:00.00]"),
        (-0.2, "00:00:00,000", "00:00:00.000", "[00:00.00]"),
    ],
)
def test_timestamps(seconds: float, srt: str, vtt: str, lrc: str) -> None:
    assert srt_timestamp(seconds) == srt
    assert vtt_timestamp(seconds) == vtt
    assert lrc_timestamp(seconds) == lrc


def test_json(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "json")
    assert body == {"text": "Ask not what your country can do for you. Ask what you can do."}
    assert media_type == "application/json"


def test_verbose_json(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "verbose_json")
    assert media_type == "application/json"
    assert isinstance(body, dict)
    json.dumps(body)  # must be serialisable as it is
    assert body["task"] == "transcribe"
    assert body["language"] == "en"
    assert body["duration"] == 3663.25
    assert body["text"] == "Ask not what your country can do for you. Ask what you can do."
    assert body["segments"] == [
        {
            "id": 0,
            "start": 0.0,
            "end": 2.5,
            "text": " Ask not what your country can do for you.",
            "avg_logprob": -0.25,
        },
        {
            "id": 1,
            "start": 3661.5,
            "end": 3663.25,
            "text": " Ask what\n you can do.",
            "avg_logprob": None,
        },
    ]
    assert body["words"] == [
        {"word": " Ask", "start": 0.0, "end": 0.4},
        {"word": " not", "start": 0.4, "end": 0.8},
    ]


def test_verbose_json_without_words_has_no_words_key(empty: TranscriptionResult) -> None:
    body, _ = render_transcript(empty, "verbose_json")
    assert body == {
        "task": "transcribe",
        "language": "en",
        "duration": 1.5,
        "text": "",
        "segments": [],
    }


def test_text(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "text")
    assert body == "Ask not what your country can do for you. Ask what you can do."
    assert media_type.startswith("text/plain")


def test_srt(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "srt")
    assert body == (
        "1\n"
        "00:00:00,000 --> 00:00:02,500\n"
        "Ask not what your country can do for you.\n"
        "\n"
        "2\n"
        "01:01:01,500 --> 01:01:03,250\n"
        "Ask what you can do.\n"
    )
    assert media_type.startswith("application/x-subrip")


def test_srt_numbering_skips_empty_segments_and_fixes_reversed_times() -> None:
    result = TranscriptionResult(
        text="one three",
        segments=[
            Segment(start=1.0, end=2.0, text="one"),
            Segment(start=2.0, end=3.0, text="   "),
            Segment(start=4.0, end=3.5, text="three"),
        ],
    )
    body, _ = render_transcript(result, "srt")
    assert body == (
        "1\n00:00:01,000 --> 00:00:02,000\none\n\n2\n00:00:04,000 --> 00:00:04,000\nthree\n"
    )


def test_vtt(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "vtt")
    assert body == (
        "WEBVTT\n"
        "\n"
        "00:00:00.000 --> 00:00:02.500\n"
        "Ask not what your country can do for you.\n"
        "\n"
        "01:01:01.500 --> 01:01:03.250\n"
        "Ask what you can do.\n"
    )
    assert media_type.startswith("text/vtt")


def test_vtt_cue_text_cannot_fake_a_timing_line() -> None:
    result = TranscriptionResult(text="a --> b", segments=[Segment(start=0, end=1, text="a --> b")])
    body, _ = render_transcript(result, "vtt")
    assert body == "WEBVTT\n\n00:00:00.000 --> 00:00:01.000\na -> b\n"


def test_lrc(two_segments: TranscriptionResult) -> None:
    body, media_type = render_transcript(two_segments, "lrc")
    assert (
        body
        == "[00:00.00] Ask not what your country can do for you.\n[61:01.50] Ask what you can do.\n"
    )
    assert media_type.startswith("text/plain")


def test_text_without_segments_becomes_one_cue() -> None:
    result = TranscriptionResult(text=" four queen of clubs", duration=1.96)
    assert render_transcript(result, "srt")[0] == (
        "1\n00:00:00,000 --> 00:00:01,960\nfour queen of clubs\n"
    )
    assert render_transcript(result, "lrc")[0] == "[00:00.00] four queen of clubs\n"


@pytest.mark.parametrize(
    ("response_format", "expected"),
    [
        ("json", {"text": ""}),
        ("text", ""),
        ("srt", ""),
        ("vtt", "WEBVTT\n"),
        ("lrc", ""),
    ],
)
def test_empty_transcript(
    empty: TranscriptionResult, response_format: str, expected: object
) -> None:
    assert render_transcript(empty, response_format)[0] == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("response_format", ["xml", "JSON", ""])
def test_unknown_format_is_bad_request(
    two_segments: TranscriptionResult, response_format: str
) -> None:
    with pytest.raises(BadRequest) as info:
        render_transcript(two_segments, response_format)  # type: ignore[arg-type]
    assert info.value.code == "bad_response_format"
    assert info.value.status_code == 400
    assert "verbose_json" in info.value.message


def test_every_declared_format_renders(two_segments: TranscriptionResult) -> None:
    for response_format in RESPONSE_FORMATS:
        body, media_type = render_transcript(two_segments, response_format)  # type: ignore[arg-type]
        assert body and media_type
