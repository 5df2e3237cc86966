"""Home Assistant's Wyoming calls against the running mesh, through the gateway's Wyoming port.

The embedded mesh of ``conftest.py`` (real Redis, detector, CPU STT, VITS TTS, gateway);
the client is the ``wyoming`` package's ``AsyncTcpClient`` sending events as Home
Assistant's integration sends them (:mod:`tests.wyoming_ha`). Transcripts are held to
the streaming WER bound of the WebSocket tests: within a point of faster-whisper's
own offline decode of the same clip. The failover case is in
``test_gateway_failover.py``, whose mesh has replicas to fail over between.
"""

from __future__ import annotations

import numpy as np
import pytest
from wyoming.asr import TranscriptStart

from tests.harness import clip_named, error_rate, offline_transcript
from tests.integration.conftest import Mesh
from tests.wyoming_ha import synthesize, synthesize_streaming, transcribe
from voicemesh.audio_files import load_clip_16k

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

HOST = "127.0.0.1"
WER_MARGIN = 1.0
"""Points above offline faster-whisper with the same model (as the WebSocket tests)."""
JFK = clip_named("whisper-jfk.wav")
SHORT = clip_named("pocketsphinx-librivox-0870.wav")
SENTENCE = "Please turn off the lights in the kitchen and lock the front door."
BUNDLED_VOICE = "en_US-joe-medium"


def port(mesh: Mesh) -> int:
    assert mesh.gateway.wyoming_port is not None
    return mesh.gateway.wyoming_port


async def test_describe_lists_the_models_and_voices_of_the_mesh(mesh: Mesh) -> None:
    from wyoming.client import AsyncTcpClient
    from wyoming.info import Describe, Info

    async with AsyncTcpClient(HOST, port(mesh)) as client:
        await client.write_event(Describe().event())
        event = await client.read_event()
    assert event is not None and Info.is_type(event.type)
    info = Info.from_event(event)
    (asr,) = info.asr
    (tts,) = info.tts
    assert asr.supports_transcript_streaming and tts.supports_synthesize_streaming
    models = {m.name: m for m in asr.models}
    assert any("base" in name for name in models), models  # the CPU replica's Whisper base
    assert all(m.installed and "en" in m.languages for m in models.values())
    assert not any("tiny" in name for name in models)  # the detector's model only confirms
    voices = {v.name: v for v in tts.voices}
    assert voices[BUNDLED_VOICE].languages == ["en-US"]  # as the catalogue writes it


async def test_clip_streamed_like_home_assistant_is_transcribed_with_chunks(mesh: Mesh) -> None:
    result = await transcribe(
        HOST, port(mesh), load_clip_16k(JFK.path), realtime=True, trailing_silence_s=0.5
    )
    assert result.errors == []
    kinds = [e.type for _, e in result.events]
    assert kinds[0] == "transcript-start" and kinds[-2:] == ["transcript", "transcript-stop"]
    start = TranscriptStart.from_event(result.of_type("transcript-start")[0])
    assert start.context and start.context["voicemesh"]["backend"] == mesh.stt_cpu.url
    streamed = error_rate(JFK.text, result.text)
    offline = error_rate(JFK.text, offline_transcript(JFK))
    assert streamed <= offline + WER_MARGIN, (result.text, streamed, offline)
    # Chunks come while the audio still arrives, and joined they spell the transcript.
    assert result.chunks and "".join(result.chunks).strip() == result.text
    first_chunk_at = next(t for t, e in result.events if e.type == "transcript-chunk")
    assert first_chunk_at < result.stop_sent_at
    print(f"wyoming streaming: final {result.latency_s * 1000:.0f} ms after audio-stop")


async def test_clip_sent_at_once_is_transcribed(mesh: Mesh) -> None:
    result = await transcribe(
        HOST, port(mesh), load_clip_16k(SHORT.path), realtime=False, trailing_silence_s=0.5
    )
    assert result.errors == []
    streamed = error_rate(SHORT.text, result.text)
    offline = error_rate(SHORT.text, offline_transcript(SHORT))
    assert streamed <= offline + WER_MARGIN, (result.text, streamed, offline)
    assert result.context["voicemesh"]["failovers"] == 0  # type: ignore[index]


async def test_sentence_synthesized_and_transcribed_back(mesh: Mesh) -> None:
    spoken = await synthesize(HOST, port(mesh), SENTENCE, voice=BUNDLED_VOICE)
    assert spoken.errors == [] and spoken.utterances == 1
    assert spoken.rate == 22050  # the voice's own rate: the transcription resamples it
    seconds = spoken.samples.size / spoken.rate
    assert 2.0 < seconds < 10.0, seconds
    heard = await transcribe(
        HOST,
        port(mesh),
        spoken.samples,
        rate=spoken.rate,
        realtime=False,
        trailing_silence_s=0.5,
    )
    assert error_rate(SENTENCE, heard.text) <= 10.0, heard.text


async def test_streamed_text_is_spoken_sentence_by_sentence(mesh: Mesh) -> None:
    pieces = ["Good morning. ", "The coffee ", "is ready in the kit", "chen."]
    spoken = await synthesize_streaming(HOST, port(mesh), pieces, voice=BUNDLED_VOICE)
    assert spoken.errors == [] and spoken.stopped
    assert spoken.utterances == 2  # "Good morning." as soon as it was complete, then the rest
    assert spoken.samples.size / spoken.rate > 1.5
    assert float(np.abs(spoken.samples).max()) > 0.05


async def test_unknown_voice_is_an_error_event(mesh: Mesh) -> None:
    spoken = await synthesize(HOST, port(mesh), "Hello.", voice="no-such-voice")
    assert [e.code for e in spoken.errors] == ["unknown_voice"], spoken.errors
