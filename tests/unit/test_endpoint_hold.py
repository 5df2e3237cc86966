"""Holding a doubtful final (a hesitant speaker's pause must not split the sentence), and partials.

The session runs with scripted parts: a VAD that calls loud windows speech, and a
decoder whose confidence depends on how much audio it is given (short pieces are
unsure, the whole sentence is sure), so the hold logic is tested on its own.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from voicemesh.protocol import SAMPLE_RATE
from voicemesh.stt.load import LoadMeter
from voicemesh.stt.scheduler import Priority
from voicemesh.stt.streaming import StreamingSession
from voicemesh.stt.streaming_rules import EngineLabel, StreamingConfig, doubtful
from voicemesh.stt.types import TranscriptionResult
from voicemesh.stt.vad import WINDOW

pytestmark = pytest.mark.unit


class LoudnessVad:
    """Speech wherever the signal is loud; a stand-in for Silero with exact timing."""

    def __init__(self) -> None:
        self._pending = np.zeros(0, dtype=np.float32)

    def process(self, audio: np.ndarray) -> np.ndarray:
        self._pending = np.concatenate([self._pending, audio])
        n = self._pending.size // WINDOW
        block = self._pending[: n * WINDOW].reshape(n, WINDOW)
        self._pending = self._pending[n * WINDOW :]
        return (np.abs(block).max(axis=1) > 0.1).astype(np.float32) * 0.9


class ScriptedDecoder:
    """Decodes any block; unsure (log-probability -1.2) below ``sure_after_s`` of audio."""

    def __init__(
        self, sure_after_s: float, retried: bool = False, partial_text: str | None = None
    ) -> None:
        self.sure_after_s = sure_after_s
        self.retried = retried
        self.partial_text = partial_text
        self.finals: list[float] = []
        self.meter = LoadMeter(workers=1)

    async def decode(self, audio: np.ndarray, priority: Priority, **_: Any) -> TranscriptionResult:
        seconds = audio.size / SAMPLE_RATE
        partial = priority in (Priority.PARTIAL, Priority.FIRST_PARTIAL)
        if not partial:
            self.finals.append(seconds)
        sure = seconds >= self.sure_after_s
        if partial and self.partial_text is not None:
            return TranscriptionResult(text=self.partial_text, duration=seconds)
        return TranscriptionResult(
            text=f"words of {seconds:.1f} seconds",
            duration=seconds,
            avg_logprob=-0.2 if sure else -1.2,
            retried=self.retried and not sure,
        )


def speech(seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.5 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), dtype=np.float32)


def session_for(
    decoder: ScriptedDecoder, config: StreamingConfig
) -> tuple[StreamingSession, list[Any]]:
    out: list[Any] = []

    async def emit(message: Any) -> None:
        if message.type in ("final", "partial"):
            out.append(message)

    session = StreamingSession(
        decoder,
        emit,  # type: ignore[arg-type]
        EngineLabel("scripted", "cpu", "none"),
        config,
        vad=LoudnessVad(),
    )  # type: ignore[arg-type]
    return session, out


async def feed(session: StreamingSession, pieces: list[np.ndarray]) -> None:
    audio = np.concatenate(pieces)
    for i in range(0, audio.size, 640):
        await session.feed(audio[i : i + 640])


async def stream(
    decoder: ScriptedDecoder,
    pieces: list[np.ndarray],
    config: StreamingConfig,
    *,
    stop: bool = True,
) -> list[Any]:
    session, finals = session_for(decoder, config)
    await feed(session, pieces)
    if stop:
        await session.close()
    return [m for m in finals if m.type == "final"]


async def test_a_pause_after_an_unsure_piece_does_not_end_the_utterance() -> None:
    # 1.5 s of speech, a 0.8 s pause (past the 0.5 s endpoint), 1.5 s more, then silence.
    decoder = ScriptedDecoder(sure_after_s=2.5)
    finals = await stream(
        decoder, [speech(1.5), silence(0.8), speech(1.5), silence(1.5)], StreamingConfig(hold_s=0.5)
    )
    assert len(finals) == 1, [f.text for f in finals]
    assert finals[0].start == 0.0
    assert finals[0].end == pytest.approx(4.4, abs=0.1)  # second speech end + 0.5 s (+ onset)
    # Decoded whole, the pause included: one final decode of the whole utterance
    # after the held one of its first piece.
    assert decoder.finals[-1] >= 3.8
    assert finals[0].text == f"words of {decoder.finals[-1]:.1f} seconds"


async def test_without_the_hold_the_same_pause_splits_the_sentence() -> None:
    decoder = ScriptedDecoder(sure_after_s=2.5)
    finals = await stream(
        decoder, [speech(1.5), silence(0.8), speech(1.5), silence(1.5)], StreamingConfig(hold_s=0.0)
    )
    assert len(finals) == 2


async def test_a_sure_final_is_not_held() -> None:
    decoder = ScriptedDecoder(sure_after_s=1.0)
    finals = await stream(
        decoder, [speech(1.5), silence(0.8), speech(1.5), silence(1.5)], StreamingConfig(hold_s=0.5)
    )
    assert len(finals) == 2
    # The first final ends at its own endpoint, not later.
    assert finals[0].end == pytest.approx(2.0, abs=0.1)


async def test_a_held_final_comes_when_the_hold_runs_out() -> None:
    decoder = ScriptedDecoder(sure_after_s=10.0)
    finals = await stream(
        decoder, [speech(1.5), silence(2.0)], StreamingConfig(hold_s=0.5), stop=False
    )
    assert len(finals) == 1
    # The utterance still ends at the endpoint; the hold only delays the message.
    assert finals[0].end == pytest.approx(2.0, abs=0.1)
    assert finals[0].reason == "endpoint"


async def test_a_pause_longer_than_the_hold_still_ends_the_utterance() -> None:
    decoder = ScriptedDecoder(sure_after_s=10.0)
    finals = await stream(
        decoder, [speech(1.5), silence(1.5), speech(1.5), silence(1.5)], StreamingConfig(hold_s=0.5)
    )
    assert len(finals) == 2
    assert finals[0].end == pytest.approx(2.0, abs=0.1)
    assert finals[1].start >= finals[0].end
    assert finals[1].end == pytest.approx(5.0, abs=0.1)


async def test_stop_during_a_hold_gives_the_held_final_at_once() -> None:
    decoder = ScriptedDecoder(sure_after_s=10.0)
    finals = await stream(decoder, [speech(1.5), silence(0.7)], StreamingConfig(hold_s=0.5))
    assert len(finals) == 1
    assert finals[0].end == pytest.approx(2.0, abs=0.1)
    # The held decode was used; nothing was decoded again for the stop.
    assert len(decoder.finals) == 1


async def test_a_backstop_flush_for_the_pause_does_not_cut_the_resumed_speech() -> None:
    # The gateway flushes when its detector saw speech end (at 1.5 s) and no final
    # came; here the engine held the final and the speaker went on.
    decoder = ScriptedDecoder(sure_after_s=2.5)
    session, out = session_for(decoder, StreamingConfig(hold_s=0.5))
    await feed(session, [speech(1.5), silence(0.8), speech(1.0)])
    await session.flush("flush", until=1.5)
    assert [m for m in out if m.type == "final"] == []
    await feed(session, [speech(0.5), silence(1.0)])
    finals = [m for m in out if m.type == "final"]
    assert len(finals) == 1 and finals[0].start == 0.0
    # A flush for speech that is still going on, with no pause held, still cuts.
    await feed(session, [speech(1.0)])
    await session.flush("flush", until=session.samples / 16000)
    finals = [m for m in out if m.type == "final"]
    assert len(finals) == 2 and finals[1].reason == "flush"


@pytest.mark.parametrize(
    ("partial", "sent"), [("y y y y y y y y", False), ("the quick brown fox", True)]
)
async def test_a_looping_partial_is_not_sent(partial: str, sent: bool) -> None:
    decoder = ScriptedDecoder(sure_after_s=0.0, partial_text=partial)
    session, out = session_for(decoder, StreamingConfig(hold_s=0.5))
    await feed(session, [speech(3.0), silence(1.0)])
    assert any(m.type == "partial" for m in out) is sent
    assert [m.type for m in out][-1] == "final"


def test_doubtful_means_retried_or_unsure() -> None:
    config = StreamingConfig(hold_logprob=-0.5)
    assert doubtful(TranscriptionResult(text="x", avg_logprob=-0.6), config)
    assert doubtful(TranscriptionResult(text="x", avg_logprob=-0.1, retried=True), config)
    assert not doubtful(TranscriptionResult(text="x", avg_logprob=-0.3), config)
