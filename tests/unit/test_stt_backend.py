"""The gateway's stall watch (``gateway.stt_backend.StallWatch``) on a hand-moved clock."""

from __future__ import annotations

import pytest

from gateway.stt_backend import StallWatch

pytestmark = pytest.mark.unit

TIMEOUT_S = 3.0


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def watch() -> tuple[StallWatch, Clock]:
    clock = Clock()
    return StallWatch(TIMEOUT_S, max_utterance_s=30.0, clock=clock), clock


def test_nothing_owed_is_never_a_stall() -> None:
    stall, clock = watch()
    clock.now += 60
    assert not stall.stalled(audio_s=60.0)


def test_quiet_past_the_timeout_while_speech_is_pending_is_a_stall() -> None:
    stall, clock = watch()
    stall.track({"type": "partial", "start": 0.5, "end": 1.0})
    clock.now += TIMEOUT_S - 0.1
    assert not stall.stalled(audio_s=3.0)
    clock.now += 0.2
    assert stall.stalled(audio_s=3.2)
    assert stall.why(3.2).startswith("stalled: no message for 3 s")
    stall.heard()
    assert not stall.stalled(audio_s=3.2)


def test_a_final_or_the_engines_speech_end_pays_the_debt() -> None:
    stall, clock = watch()
    stall.track({"type": "vad", "event": "speech_start", "t": 0.3})
    stall.track({"type": "final", "start": 0.3, "end": 1.0})
    clock.now += 10
    assert not stall.stalled(audio_s=10.0)
    stall.track({"type": "partial", "start": 2.0, "end": 2.5})
    stall.track({"type": "vad", "event": "speech_end", "t": 2.6})
    clock.now += 10
    assert not stall.stalled(audio_s=20.0)


def test_detector_speech_counts_only_for_a_backend_that_never_spoke_and_later() -> None:
    stall, clock = watch()
    stall.track_detector({"type": "speech_start", "t": 0.3})
    clock.now += TIMEOUT_S + 0.5
    assert not stall.stalled(audio_s=4.0)  # a loaded engine may hear it late
    clock.now += TIMEOUT_S
    assert stall.stalled(audio_s=7.0)
    assert stall.why(7.0) == "stalled: no message for 6 s while speech was pending"

    spoke, clock = watch()
    spoke.track({"type": "final", "start": 0.0, "end": 1.0})
    spoke.track_detector({"type": "speech_start", "t": 2.0})
    clock.now += 60
    assert not spoke.stalled(audio_s=60.0)


def test_speech_the_detector_then_rejects_is_owed_no_more() -> None:
    stall, clock = watch()
    stall.track_detector({"type": "speech_start", "t": 0.3})
    stall.track_detector({"type": "speech_end", "t": 0.9, "confirmed": False})
    clock.now += 60
    assert not stall.stalled(audio_s=60.0)


def test_partials_past_the_longest_utterance_without_a_final_are_a_stall() -> None:
    stall, clock = watch()
    for t in range(1, 40):
        clock.now += 1
        stall.heard()
        stall.track({"type": "partial", "start": 1.0, "end": float(t)})
        stalled = stall.stalled(audio_s=float(t))
        assert stalled == (t - 1.0 - 30.0 > TIMEOUT_S), t
    assert stall.why(39.0).startswith("stalled: partials but no final")
    stall.track({"type": "final", "start": 1.0, "end": 39.0})
    assert not stall.stalled(audio_s=39.0)


def test_a_new_backend_starts_with_a_clean_slate() -> None:
    stall, clock = watch()
    stall.track({"type": "partial", "start": 0.0, "end": 1.0})
    clock.now += 10
    stall.restart(speech_pending=True)
    assert not stall.stalled(audio_s=10.0) and stall.spoke is False
    clock.now += TIMEOUT_S + 0.1
    assert stall.stalled(audio_s=13.0)  # the replayed speech is owed by the new backend
