"""The catalogue routes of the TTS service: ``GET /v1/voices``, ``GET /v1/voices/{id}`` (with
a spoken sample) and ``GET /v1/voices/{id}/sample.wav``, plus how a request names its voice.

A voice is named by its catalogue id, by ``<model>:<speaker index>``, or by a speaker
index of the model a request gives (:meth:`voicemesh.tts.catalogue.VoiceCatalogue.resolve`).
"""

from __future__ import annotations

import asyncio
import base64
import urllib.parse
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.requests import HTTPConnection
from fastapi.responses import JSONResponse, Response

from voicemesh.tts.catalogue import Gender, Voice
from voicemesh.tts.encoding import AudioFormat, encode_audio
from voicemesh.tts.protocol import VoiceChoice
from voicemesh.tts.state import ENGINE_NAME, TtsState

_SAMPLE_TEXT = {
    "en": "Hello! I am {name}. This is how I sound when I read a sentence aloud.",
    "zh": "你好，这是我的声音。很高兴认识你。",  # noqa: RUF001 - Chinese punctuation
}


def get_tts_state(connection: HTTPConnection) -> TtsState:
    """The running replica's state (set by the lifespan)."""
    state: TtsState = connection.app.state.tts
    return state


Tts = Annotated[TtsState, Depends(get_tts_state)]
router = APIRouter()


def chosen_voice(state: TtsState, choice: VoiceChoice) -> Voice:
    """The installed voice a request names (by id, speaker index or model)."""
    voice = state.catalogue.resolve(choice.voice_ref(), choice.model, state.settings.default_voice)
    return state.catalogue.installed_voice(voice)


def audio_headers(voice: Voice, fmt: AudioFormat, rate: int) -> dict[str, str]:
    """Headers naming the engine, voice, model, rate and format of an answer."""
    return {
        "X-VoiceMesh-Engine": f"{ENGINE_NAME}/{voice.model.family}",
        "X-VoiceMesh-Voice": voice.id,
        # Percent-encoded: a header is latin-1, a voice name need not be.
        "X-VoiceMesh-Voice-Name": urllib.parse.quote(voice.entry.name),
        "X-VoiceMesh-Speaker-Id": str(voice.entry.speaker_id),
        "X-VoiceMesh-Model": voice.model.id,
        "X-VoiceMesh-Sample-Rate": str(rate),
        "X-VoiceMesh-Format": fmt,
    }


def describe_voice(state: TtsState, voice: Voice) -> dict[str, Any]:
    """A voice as the API shows it, with its moods and its measured real-time factor."""
    return {**voice.describe(), "performance": {"rtf": state.voice_rtf.get(voice.id)}}


@router.get("/v1/voices")
async def list_voices(
    state: Tts,
    *,
    model: str | None = None,
    language: str | None = None,
    gender: Gender | None = None,
    tag: str | None = None,
    mood: str | None = None,
    installed: bool | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0)] = 0,
    page: Annotated[int | None, Query(ge=1, description="1-based; sets offset")] = None,
) -> JSONResponse:
    """The catalogue, filtered and paged (by ``offset``, or by ``page`` of ``limit``)."""
    if model is not None:
        state.catalogue.model_entry(model)  # an unknown model is a 404, not an empty list
    found = state.catalogue.filter(
        model=model, language=language, gender=gender, tag=tag, mood=mood, installed=installed
    )
    if page is not None:
        offset = (page - 1) * limit
    shown = found[offset : offset + limit]
    after = offset + len(shown)
    return JSONResponse(
        {
            "voices": [describe_voice(state, v) for v in shown],
            "total": len(found),
            "limit": limit,
            "offset": offset,
            "next_offset": after if after < len(found) else None,
            "default_voice": state.settings.default_voice,
        }
    )


def voice_by_path(state: TtsState, voice_id: str, model: str | None) -> Voice:
    """The voice a path names: an id, ``<model>:<index>``, or an index of ``model``."""
    return state.catalogue.resolve(voice_id, model, state.settings.default_voice)


@router.get("/v1/voices/{voice_id}/sample.wav")
async def get_sample_wav(state: Tts, voice_id: str, model: str | None = None) -> Response:
    """A short WAV of the voice introducing itself (made on first request, then cached)."""
    voice = state.catalogue.installed_voice(voice_by_path(state, voice_id, model))
    state.check_serving()
    sample = await voice_sample(state, voice)
    data = base64.b64decode(sample["audio_base64"])
    headers = audio_headers(voice, "wav", int(sample["sample_rate"]))
    headers["X-VoiceMesh-Duration"] = f"{sample['duration_s']:.3f}"
    return Response(data, media_type="audio/wav", headers=headers)


@router.get("/v1/voices/{voice_id}")
async def get_voice(
    state: Tts, voice_id: str, sample: bool = True, model: str | None = None
) -> JSONResponse:
    """One voice, with a spoken sample when its model is installed here."""
    voice = voice_by_path(state, voice_id, model)
    body = describe_voice(state, voice)
    if sample and voice.installed:
        state.check_serving()
        body["sample"] = await voice_sample(state, voice)
    elif sample:
        body["sample"] = None
        body["sample_error"] = "the voice's model is not installed on this replica"
    return JSONResponse(body)


async def voice_sample(state: TtsState, voice: Voice) -> dict[str, Any]:
    """A short WAV of ``voice`` introducing itself (made once per replica)."""
    cached = state.samples.get(voice.id)
    if cached is not None:
        return cached
    language = voice.entry.language.split("-")[0].lower()
    text = _SAMPLE_TEXT.get(language, _SAMPLE_TEXT["en"]).format(name=voice.entry.name)
    async with state.admission.slot():
        engine = await asyncio.to_thread(state.engines.get, voice.model)
        result = await asyncio.to_thread(engine.synthesize, text, speaker_id=voice.entry.speaker_id)
    data = await asyncio.to_thread(encode_audio, result.audio, result.sample_rate, "wav")
    sample = {
        "text": text,
        "format": "wav",
        "sample_rate": result.sample_rate,
        "duration_s": round(result.duration_s, 3),
        "audio_base64": base64.b64encode(data).decode("ascii"),
    }
    state.samples[voice.id] = sample
    return sample
