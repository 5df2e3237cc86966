"""Render a transcript in the response formats of the OpenAI transcription API, plus LRC.

``json`` and ``verbose_json`` give a dict for the web layer to serialise; the subtitle
and text formats give a ready string. Cue times come from the result's segments; a
result with text but no segments becomes one cue spanning its duration.
"""

from __future__ import annotations

import logging
from typing import Any, Literal, get_args

from voicemesh.errors import BadRequest
from voicemesh.protocol import Segment
from voicemesh.stt.types import TranscriptionResult

_LOGGER = logging.getLogger(__name__)

ResponseFormat = Literal["json", "verbose_json", "text", "srt", "vtt", "lrc"]
RESPONSE_FORMATS: tuple[str, ...] = get_args(ResponseFormat)

JSON_MEDIA_TYPE = "application/json"
TEXT_MEDIA_TYPE = "text/plain; charset=utf-8"
SRT_MEDIA_TYPE = "application/x-subrip; charset=utf-8"
VTT_MEDIA_TYPE = "text/vtt; charset=utf-8"
LRC_MEDIA_TYPE = "text/plain; charset=utf-8"


def _clean(text: str) -> str:
    """One line of cue text: a blank line inside a cue would end it early."""
    return " ".join(text.split())


def _milliseconds(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def srt_timestamp(seconds: float) -> str:
    """Format seconds as an SRT time, ``HH:MM:SS,mmm`` (hours grow past two digits)."""
    ms = _milliseconds(seconds)
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d},{ms:03d}"


def vtt_timestamp(seconds: float) -> str:
    """Format seconds as a WebVTT time, ``HH:MM:SS.mmm``."""
    return srt_timestamp(seconds).replace(",", ".")


def lrc_timestamp(seconds: float) -> str:
    """Format seconds as an LRC tag, ``[mm:ss.xx]`` with total minutes and centiseconds."""
    cs = max(0, round(seconds * 100))
    minutes, cs = divmod(cs, 6000)
    secs, cs = divmod(cs, 100)
    return f"[{minutes:02d}:{secs:02d}.{cs:02d}]"


def _cues(result: TranscriptionResult) -> list[tuple[float, float, str]]:
    """(start, end, text) of each non-empty segment, end never before start."""
    if result.segments:
        segments = result.segments
    elif result.text.strip():
        segments = [Segment(start=0.0, end=result.duration, text=result.text)]
    else:
        segments = []
    cues = []
    for segment in segments:
        text = _clean(segment.text)
        if text:
            cues.append((segment.start, max(segment.start, segment.end), text))
    return cues


def _render_srt(result: TranscriptionResult) -> str:
    blocks = [
        f"{index}\n{srt_timestamp(start)} --> {srt_timestamp(end)}\n{text}\n"
        for index, (start, end, text) in enumerate(_cues(result), start=1)
    ]
    return "\n".join(blocks)


def _render_vtt(result: TranscriptionResult) -> str:
    blocks = [
        # "-->" inside cue text would be read as a timing line.
        f"{vtt_timestamp(start)} --> {vtt_timestamp(end)}\n{text.replace('-->', '->')}\n"
        for start, end, text in _cues(result)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def _render_lrc(result: TranscriptionResult) -> str:
    return "".join(f"{lrc_timestamp(start)} {text}\n" for start, _end, text in _cues(result))


def _render_verbose_json(result: TranscriptionResult) -> dict[str, Any]:
    segments = [
        {
            "id": index,
            "start": round(segment.start, 3),
            "end": round(segment.end, 3),
            "text": segment.text,
            # OpenAI's verbose_json carries it too: the decoder's confidence in the segment.
            "avg_logprob": segment.avg_logprob,
        }
        for index, segment in enumerate(result.segments)
    ]
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": result.language,
        "duration": round(result.duration, 3),
        "text": result.text.strip(),
        "segments": segments,
    }
    words = [
        {"word": word.word, "start": round(word.start, 3), "end": round(word.end, 3)}
        for segment in result.segments
        for word in segment.words or ()
    ]
    if words:
        body["words"] = words
    return body


def render_transcript(
    result: TranscriptionResult, response_format: ResponseFormat
) -> tuple[str | dict[str, Any], str]:
    """Render ``result`` in ``response_format``; returns (body, media type)."""
    if response_format == "json":
        return {"text": result.text.strip()}, JSON_MEDIA_TYPE
    if response_format == "verbose_json":
        return _render_verbose_json(result), JSON_MEDIA_TYPE
    if response_format == "text":
        return result.text.strip(), TEXT_MEDIA_TYPE
    if response_format == "srt":
        return _render_srt(result), SRT_MEDIA_TYPE
    if response_format == "vtt":
        return _render_vtt(result), VTT_MEDIA_TYPE
    if response_format == "lrc":
        return _render_lrc(result), LRC_MEDIA_TYPE
    raise BadRequest(
        f"response_format must be one of {', '.join(RESPONSE_FORMATS)}; got {response_format!r}",
        code="bad_response_format",
    )
