"""Wyoming ``describe`` -> ``info``: the mesh's ASR models and TTS voices.

The ASR models are the ones ``GET /v1/asr/models`` lists that some replica
transcribes with (:func:`gateway.asr.mesh_asr_models`; the detector's model only
confirms speech, so it is left out); the voices are the TTS service's installed
catalogue voices (``GET /v1/voices?installed=true`` through the gateway's TTS
routing). Both programs say they stream: partial transcripts come as
``transcript-chunk`` events, and text sent with ``synthesize-chunk`` is spoken
sentence by sentence.
"""

from __future__ import annotations

import logging
from typing import Any

from wyoming.info import AsrModel, AsrProgram, Attribution, Info, TtsProgram, TtsVoice

from gateway.asr import mesh_asr_models
from gateway.proxy import BackendCall, route
from gateway.state import GatewayState
from gateway.tts import TTS_VITS, tts_choice
from voicemesh import __version__
from voicemesh.errors import EngineUnavailable

_LOGGER = logging.getLogger(__name__)

ATTRIBUTION = Attribution(name="VoiceMesh", url="https://github.com/voicemesh/voicemesh")
PROGRAM = "voicemesh"


async def installed_voice_list(state: GatewayState, request_id: str) -> list[dict[str, Any]]:
    """The TTS service's installed voices (id, name, language, ...); empty when none answers."""
    call = BackendCall(
        "GET", "/v1/voices", request_id, params={"installed": "true", "limit": "500"}
    )
    try:
        routed = await route(
            state, call, tts_choice(TTS_VITS, "voices"), service=TTS_VITS, kind="tts"
        )
    except EngineUnavailable as exc:
        _LOGGER.warning("request %s: no voice list for Wyoming: %s", request_id, exc.message)
        return []
    try:
        body = routed.response.json() if routed.response.status_code == 200 else {}
    finally:
        await routed.aclose()
    voices = body.get("voices", [])
    return [v for v in voices if isinstance(v, dict) and "id" in v]


def artifact(
    name: str, description: str, version: str | None = __version__, *, installed: bool = True
) -> dict[str, Any]:
    """What every Wyoming program, model and voice says about itself."""
    return {
        "name": name,
        "attribution": ATTRIBUTION,
        "installed": installed,
        "description": description,
        "version": version,
    }


def asr_program(models: list[dict[str, Any]]) -> AsrProgram:
    """The ASR program of ``info``: every model a replica transcribes with (installed when
    one has it loaded and routable now)."""
    return AsrProgram(
        **artifact(PROGRAM, "VoiceMesh streaming speech recognition (routed, with failover)"),
        models=[
            AsrModel(
                **artifact(str(m["id"]), str(m["name"]), None, installed=m["status"] == "loaded"),
                languages=list(m["capabilities"]["languages"]),
            )
            for m in models
            if m["transcribes_files"]
        ],
        supports_transcript_streaming=True,
    )


def tts_program(voices: list[dict[str, Any]]) -> TtsProgram:
    """The TTS program of ``info``: every installed voice, with its language."""
    return TtsProgram(
        **artifact(PROGRAM, "VoiceMesh text to speech (routed, with failover)"),
        voices=[
            TtsVoice(
                **artifact(str(v["id"]), str(v.get("name") or v["id"]), version=None),
                languages=[str(v["language"])] if v.get("language") else [],
            )
            for v in voices
        ],
        supports_synthesize_streaming=True,
    )


async def describe_mesh(state: GatewayState, request_id: str) -> Info:
    """The ``info`` answer to ``describe``."""
    voices = await installed_voice_list(state, request_id)
    return Info(asr=[asr_program(mesh_asr_models(state))], tts=[tts_program(voices)])
