"""Pure pieces of streaming: agreement of hypotheses, endpointing, the replay buffer."""

from __future__ import annotations

import numpy as np
import pytest

from gateway.replay import SessionBuffer
from gateway.stt_backend import shift_times, ws_url
from voicemesh.stt.streaming_rules import StreamingConfig, looks_like_speech, stable_prefix
from voicemesh.stt.types import (
    TranscriptionResult,
    compression_ratio,
    has_repetition_loop,
    suspicious,
)
from voicemesh.stt.vad import WINDOW_S, Endpointer, EndpointerConfig

pytestmark = pytest.mark.unit


def test_stable_prefix_keeps_agreed_words_and_holds_back_the_last() -> None:
    assert stable_prefix("and so my fellow", "And so, my fellow Americans") == "And so, my fellow"
    assert stable_prefix("and so my", "and so my") == "and so"
    assert stable_prefix("", "hello there") == ""
    assert stable_prefix("how do you", "had he married") == ""


def test_whisper_no_speech_signal_rejects_blocks() -> None:
    config = StreamingConfig()
    assert looks_like_speech(TranscriptionResult(text="Hello."), config)
    assert not looks_like_speech(TranscriptionResult(text=" ... "), config)
    assert not looks_like_speech(
        TranscriptionResult(text="Thank you.", no_speech_prob=0.9, avg_logprob=-1.5), config
    )
    loop = "ddech, " * 40
    assert not looks_like_speech(
        TranscriptionResult(text=loop, compression_ratio=compression_ratio(loop)), config
    )


def windows(seconds: float, p: float) -> np.ndarray:
    return np.full(round(seconds / WINDOW_S), p, dtype=np.float32)


def test_endpointer_fires_start_onset_and_end_in_order() -> None:
    ep = Endpointer(EndpointerConfig(min_speech_s=0.1, silence_onset_s=0.1, min_silence_s=0.5))
    events = ep.update(np.concatenate([windows(0.5, 0.0), windows(1.0, 0.9), windows(0.7, 0.05)]))
    kinds = [e.kind for e in events]
    assert kinds == ["speech_start", "silence_onset", "speech_end"]
    start, onset, end = events
    assert start.t == pytest.approx(0.5, abs=0.04)
    assert end.speech_end == pytest.approx(1.5, abs=0.04)
    assert onset.t < end.t


def test_short_pause_resumes_without_ending_the_utterance() -> None:
    ep = Endpointer(EndpointerConfig(silence_onset_s=0.1, min_silence_s=0.5))
    kinds = [
        e.kind
        for e in ep.update(
            np.concatenate([windows(0.5, 0.9), windows(0.3, 0.1), windows(0.5, 0.9)])
        )
    ]
    assert kinds == ["speech_start", "silence_onset", "speech_resume"]
    assert ep.in_speech


def test_blip_shorter_than_min_speech_is_ignored() -> None:
    ep = Endpointer(EndpointerConfig(min_speech_s=0.2))
    assert ep.update(np.concatenate([windows(0.064, 0.9), windows(1.0, 0.0)])) == []


def test_session_buffer_drops_what_a_final_covered() -> None:
    buf = SessionBuffer()
    for _ in range(10):
        buf.append(b"\x01\x00" * 1600)  # 10 x 100 ms
    assert buf.pending_ms == pytest.approx(1000)
    buf.drop_until(0.25)
    assert buf.start_sample == 4000
    assert len(buf.replay_since_last_final()) == (16000 - 4000) * 2
    buf.drop_until(5.0)
    assert buf.replay_since_last_final() == b"" and buf.pending_ms == 0


def test_shift_times_moves_every_time_field() -> None:
    message = {
        "type": "final",
        "start": 0.5,
        "end": 1.0,
        "segments": [
            {
                "start": 0.5,
                "end": 1.0,
                "text": "x",
                "words": [{"word": "x", "start": 0.6, "end": 0.9}],
            }
        ],
    }
    shifted = shift_times(message, 2.0)
    assert (shifted["start"], shifted["end"]) == (2.5, 3.0)
    assert shifted["segments"][0]["words"][0]["start"] == 2.6


def test_ws_url_from_http_url() -> None:
    assert ws_url("http://h:1/", "/ws/x") == "ws://h:1/ws/x"
    assert ws_url("https://h", "/ws/x") == "wss://h/ws/x"


@pytest.mark.parametrize(
    ("text", "loop"),
    [
        ("首先 上 上 上 上 上 上", True),
        ("ddech, ddech, ddech, ddech,", True),
        ("that that that is", False),
        ("好 首先说一下", False),
        ("I said hello hello", False),
        ("您您您", True),
        ("谢谢", False),
    ],
)
def test_repetition_loops_are_spotted(text: str, loop: bool) -> None:
    assert has_repetition_loop(text) is loop
    assert suspicious(TranscriptionResult(text=text, compression_ratio=1.0)) is loop


def test_loops_are_retried_but_low_confidence_alone_is_not() -> None:
    assert not suspicious(TranscriptionResult(text="hello", avg_logprob=-1.5))
    loop = "ddech, " * 40
    assert suspicious(TranscriptionResult(text=loop, compression_ratio=compression_ratio(loop)))


def test_a_looping_window_decode_is_redone_and_marked_retried() -> None:
    from voicemesh.stt.faster_whisper_engine import FasterWhisperTranscriber

    engine = FasterWhisperTranscriber.__new__(FasterWhisperTranscriber)  # no model needed
    engine.multilingual, engine.window_pad_s, engine.beam_size = True, 6.0, 1
    pads: list[float | None] = []

    def window(_audio: np.ndarray, *, pad_s: float | None, **_: object) -> TranscriptionResult:
        pads.append(pad_s)
        return TranscriptionResult(text="上 上 上 上 上" if pad_s is not None else "首先")

    engine._transcribe_window = window  # type: ignore[method-assign]
    result = engine.transcribe(np.zeros(16000, np.float32), language="zh")
    assert pads == [6.0, None] and result.text == "首先" and result.retried
    pads.clear()
    assert not engine.transcribe(
        np.zeros(16000, np.float32), language="zh", quality_fallback=False
    ).retried
    assert pads == [6.0]


def test_a_clients_tuning_changes_only_what_it_names() -> None:
    config = StreamingConfig()
    config.tune()
    assert config == StreamingConfig()
    config.tune(prompt=" VoiceMesh, Kubernetes ", vad_threshold=0.7, min_silence_s=0.15)
    ends = config.endpointer
    assert config.prompt == "VoiceMesh, Kubernetes"
    assert (ends.threshold, ends.neg_threshold) == (0.7, pytest.approx(0.55))
    # A short silence still leaves time for the speculative final before the endpoint.
    assert ends.min_silence_s == 0.15 and ends.silence_onset_s == pytest.approx(0.075)
    assert config.preroll_s == StreamingConfig().preroll_s
    config.tune(preroll_s=0.3, vad_threshold=0.1)
    assert config.preroll_s == 0.3 and config.endpointer.neg_threshold == pytest.approx(0.01)
