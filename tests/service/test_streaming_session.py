"""The streaming session on the real Whisper base model, without any server around it."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest

from tests.harness import clip_named, error_rate
from voicemesh.audio_files import load_clip_16k
from voicemesh.stt.engines import load_transcriber
from voicemesh.stt.scheduler import DecodeScheduler
from voicemesh.stt.streaming import StreamingSession
from voicemesh.stt.streaming_rules import EngineLabel, StreamingConfig

pytestmark = pytest.mark.service

LABEL = EngineLabel(engine="faster-whisper", device="cpu", model="base")


@pytest.fixture(scope="module")
def scheduler() -> DecodeScheduler:
    return DecodeScheduler(load_transcriber("base", cpu_threads=2))


async def run(
    scheduler: DecodeScheduler, audio: np.ndarray, config: StreamingConfig, frame: int = 640
) -> list[Any]:
    out: list[Any] = []

    async def emit(message: Any) -> None:
        out.append(message)

    session = StreamingSession(scheduler, emit, LABEL, config)
    for i in range(0, audio.size, frame):
        await session.feed(audio[i : i + frame])
    await session.close()
    return out


async def test_a_long_utterance_is_cut_at_a_quiet_point_and_nothing_is_lost(
    scheduler: DecodeScheduler,
) -> None:
    clip = clip_named("coqui-tts-LJ001-0001.wav")
    out = await run(
        scheduler, load_clip_16k(clip.path), StreamingConfig(language="en", max_utterance_s=4.0)
    )
    finals = [m for m in out if m.type == "final"]
    assert any(f.reason == "max_length" for f in finals), [f.reason for f in finals]
    assert all(f.end - f.start <= 4.0 + 0.1 for f in finals if f.reason == "max_length")
    assert error_rate(clip.text, " ".join(f.text for f in finals)) <= 15
    # utterances tile the stream: each starts where the previous one ended
    for previous, current in itertools.pairwise(finals):
        assert current.start == pytest.approx(previous.end, abs=0.01)


async def test_flush_without_speech_gives_nothing(scheduler: DecodeScheduler) -> None:
    out: list[Any] = []

    async def emit(message: Any) -> None:
        out.append(message)

    session = StreamingSession(scheduler, emit, LABEL, StreamingConfig(language="en"))
    await session.feed(np.zeros(16000, np.float32))
    await session.flush()
    assert out == []


async def test_finals_carry_engine_device_and_stream_times(scheduler: DecodeScheduler) -> None:
    clip = clip_named("pocketsphinx-librivox-0880.wav")
    silence = np.zeros(8000, np.float32)
    audio = np.concatenate([silence, load_clip_16k(clip.path), silence, silence])
    out = await run(scheduler, audio, StreamingConfig(language="en"))
    finals = [m for m in out if m.type == "final"]
    assert len(finals) == 1
    final = finals[0]
    assert (final.engine, final.device, final.model) == ("faster-whisper", "cpu", "base")
    assert final.reason == "endpoint"
    assert 0.0 <= final.start < 0.6 and final.end > 0.5 + clip.duration_s - 0.5
    assert error_rate(clip.text, final.text) <= 15
    kinds = [m.type for m in out]
    assert kinds.index("vad") < kinds.index("final")


async def test_a_whole_utterance_in_one_frame_is_not_lost(scheduler: DecodeScheduler) -> None:
    audio = load_clip_16k(clip_named("whisper-jfk.wav").path)[:48000]  # speech, then silence
    out = await run(scheduler, audio, StreamingConfig(language="en"), frame=audio.size)
    finals = [m for m in out if m.type == "final"]
    assert len(finals) == 1 and "fellow" in finals[0].text.lower(), out


async def test_a_flush_for_earlier_speech_does_not_cut_the_next_utterance(
    scheduler: DecodeScheduler,
) -> None:
    out: list[Any] = []

    async def emit(message: Any) -> None:
        out.append(message)

    clip = clip_named("pocketsphinx-librivox-0880.wav")
    audio = np.concatenate([np.zeros(32000, np.float32), load_clip_16k(clip.path)[:24000]])
    session = StreamingSession(scheduler, emit, LABEL, StreamingConfig(language="en"))
    for i in range(0, audio.size, 640):
        await session.feed(audio[i : i + 640])
    assert session.in_utterance
    await session.flush("flush", until=1.0)  # meant for speech that ended at 1 s
    assert [m for m in out if m.type == "final"] == []
    await session.flush("flush", until=None)
    assert len([m for m in out if m.type == "final"]) == 1


HESITANT = "fireredasr-BAC009S0764W0121.wav"  # 甚至出现交易几乎停滞的情况 (AISHELL-1)
HESITANT_CUTS_S = (1.085, 2.54)
"""Quiet points inside the sentence: after 甚至出 and after 现交易几乎."""
HESITANT_PAUSES_S = (0.9, 0.5)
HESITANT_LEVEL_DBFS = -39.0


def hesitant_far_field(audio: np.ndarray) -> np.ndarray:
    """One read sentence as a hesitant speaker far from the microphone says it: the
    clip at -39 dBFS with pauses of 0.9 s and 0.5 s inside it, and 1 s of silence after."""
    cuts = [0, *(int(t * 16000) for t in HESITANT_CUTS_S), audio.size]
    pieces = [audio[a:b] for a, b in itertools.pairwise(cuts)]
    pauses = [np.zeros(int(s * 16000), np.float32) for s in (*HESITANT_PAUSES_S, 1.0)]
    spoken = np.concatenate([part for pair in zip(pieces, pauses, strict=True) for part in pair])
    rms = float(np.sqrt(np.mean(audio.astype(np.float64) ** 2)))
    return (spoken * (10 ** (HESITANT_LEVEL_DBFS / 20) / rms)).astype(np.float32)


async def test_a_hesitant_far_field_speaker_is_decoded_whole(scheduler: DecodeScheduler) -> None:
    # Whisper base is unsure of the first piece, so its final is held; the speaker goes on
    # within the hold, and the whole sentence is decoded at once. Without the hold the
    # 0.9 s pause ends an utterance, and the pieces are decoded apart, worse.
    from voicemesh.stt.script import convert_for_language

    clip = clip_named(HESITANT)
    audio = hesitant_far_field(load_clip_16k(clip.path))
    # The quiet first piece sits near Whisper's no-speech rule (no_speech_prob ~0.5-0.65,
    # avg_logprob ~-0.7 to -1.15, by the CPU's int8 kernels: AVX-512 VNNI/AMX machines give
    # the higher); what is tested here is the hold, so that rule is set out of its way.
    quiet_ok = {"language": "zh", "no_speech_threshold": 0.8}
    held = [
        m for m in await run(scheduler, audio, StreamingConfig(**quiet_ok)) if m.type == "final"
    ]
    split = [
        m
        for m in await run(scheduler, audio, StreamingConfig(**quiet_ok, hold_s=0))
        if m.type == "final"
    ]
    assert len(held) == 1 and len(split) >= 2, (held, split)
    assert held[0].start < 0.1  # the first word, before the VAD fired, is in the preroll
    whole = error_rate(clip.text, convert_for_language(held[0].text, "zh"))
    pieces = error_rate(clip.text, convert_for_language(" ".join(f.text for f in split), "zh"))
    print(f"held: {whole:.1f}% {held[0].text} | split: {pieces:.1f}% {[f.text for f in split]}")
    assert whole < pieces - 10, (whole, pieces)
