"""Wyoming text-to-speech over the gateway's TTS routing.

``synthesize`` speaks its text; the streaming form (``synthesize-start``, then
``synthesize-chunk`` text as an LLM writes it, ``synthesize-stop``) speaks each
sentence as soon as it is complete (:class:`SentenceBuffer`) and answers
``synthesize-stopped`` after the last audio; the ``synthesize`` a streaming client
also sends, for servers that do not stream, is ignored inside such a stream.

Every utterance is one ``POST /v1/synthesize`` (16-bit PCM, streamed) sent by the
gateway's forward-with-failover to the service that serves the voice, exactly like
``POST /v1/audio/speech`` (:func:`gateway.tts.backend_kind_for_voice`,
:func:`gateway.tts.tts_choice`), and it comes back as ``audio-start``,
``audio-chunk`` events as the audio arrives, and ``audio-stop``. A voice is chosen by
its id (Wyoming's voice ``name``), else by ``language`` (the first installed voice
that speaks it), else the service's default.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from wyoming.audio import AudioChunk, AudioStart, AudioStop
from wyoming.tts import SynthesizeVoice

from gateway.proxy import BackendCall, error_code, error_message, request_record, route
from gateway.state import GatewayState
from gateway.tts import backend_kind_for_voice, tts_choice
from gateway.wyoming_asr import EventWriter
from voicemesh.errors import BadRequest, EngineUnavailable, UnknownModel, backend_errors

PCM_WIDTH = 2
SENTENCE_END = re.compile(r"(?<=[.!?;:])\s+|(?<=[\u3002\uff01\uff1f\uff1b])")
"""Where a sentence ends: a mark and white space, or a full-width (CJK) mark."""


@dataclass
class SentenceBuffer:
    """Streamed text in, whole sentences out (the rest waits for more text or the end)."""

    pending: str = ""

    def add(self, text: str) -> list[str]:
        """Take a chunk of text; return the sentences it completes."""
        self.pending += text
        *done, self.pending = SENTENCE_END.split(self.pending)
        return [s.strip() for s in done if s.strip()]

    def rest(self) -> str:
        """Whatever text is left at the end of the stream."""
        rest, self.pending = self.pending.strip(), ""
        return rest


def _language_key(code: str) -> str:
    return code.replace("-", "_").lower()


def pick_voice(requested: SynthesizeVoice | None, voices: list[dict[str, Any]]) -> str | None:
    """The voice id for a Wyoming voice request (None: the service's default).

    A ``name`` is taken as a voice id as it is (the service refuses an unknown one); a
    ``language`` picks the first installed voice that speaks it: the same region first
    (``en_US``), else the same language (``en``, ``en_GB``).
    """
    if requested is None or not (requested.name or requested.language):
        return None
    if requested.name:
        return requested.name
    wanted = _language_key(requested.language or "")
    spoken = [(str(v["id"]), _language_key(str(v.get("language", "")))) for v in voices]
    same_region = [vid for vid, lang in spoken if lang == wanted]
    same_language = [vid for vid, lang in spoken if lang.split("_")[0] == wanted.split("_")[0]]
    chosen = same_region or same_language
    if not chosen:
        raise UnknownModel(
            f"no installed voice speaks {requested.language!r}", code="unknown_voice"
        )
    return chosen[0]


async def speak(
    state: GatewayState,
    write: EventWriter,
    text: str,
    voice: str | None,
    request_id: str,
    *,
    record_as: str = "wyoming_tts",
) -> str:
    """Speak ``text`` as ``audio-start``, ``audio-chunk``s, ``audio-stop``; the backend's URL.

    ``record_as`` is the kind of request the gateway's stats and events count it as
    (the benchmark service's syntheses are counted apart from Home Assistant's).
    """
    payload: dict[str, Any] = {"text": text, "format": "pcm", "stream": True}
    if voice:
        payload["voice"] = voice
    call = BackendCall("POST", "/v1/synthesize", request_id, json=payload, stream=True)
    kind = await backend_kind_for_voice(state, voice)
    async with request_record(state, record_as, request_id, voice=voice) as record:
        routed = await route(state, call, tts_choice(kind, "synthesize"), service=kind, kind="tts")
        record.served(routed)
        response = routed.response
        try:
            if response.status_code != 200:
                await response.aread()
                raise BadRequest(
                    error_message(response), code=error_code(response) or "bad_request"
                )
            try:
                rate = int(response.headers["x-voicemesh-sample-rate"])
            except (KeyError, ValueError) as exc:
                raise EngineUnavailable(
                    f"{routed.replica.url} sent audio without its sample rate",
                    code="backend_error",
                ) from exc
            await write(AudioStart(rate=rate, width=PCM_WIDTH, channels=1).event())
            carry = b""
            # Audio already sent cannot be taken back: a replica lost mid-stream is an
            # error event (the client hears what came), not a failover.
            with backend_errors(routed.replica.url, doing="read the audio of"):
                async for received in response.aiter_bytes():
                    data = carry + received
                    whole = len(data) - len(data) % PCM_WIDTH
                    carry = data[whole:]
                    if whole:
                        audio = data[:whole]
                        chunk = AudioChunk(rate=rate, width=PCM_WIDTH, channels=1, audio=audio)
                        await write(chunk.event())
            await write(AudioStop().event())
        finally:
            await routed.aclose()
    return routed.replica.url
