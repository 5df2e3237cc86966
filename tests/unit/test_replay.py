"""The gateway's per-session buffer: replay since the last final, and its ``audio_ahead`` bound."""

from __future__ import annotations

import pytest

from gateway.replay import BYTES_PER_SAMPLE, SessionBuffer
from voicemesh.protocol import SAMPLE_RATE

pytestmark = pytest.mark.unit

SECOND = b"\0" * (SAMPLE_RATE * BYTES_PER_SAMPLE)


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_live_mic_in_long_silence_is_never_refused() -> None:
    clock = FakeClock()
    buffer = SessionBuffer(clock)
    for _ in range(600):  # ten minutes of silence at real-time pace, and no final
        assert buffer.refusal(SECOND, limit_s=120) is None
        buffer.append(SECOND)
        clock.now += 1.0
    assert buffer.pending_ms == 600_000


def test_audio_sent_far_faster_than_real_time_is_refused_past_the_limit() -> None:
    clock = FakeClock()
    buffer = SessionBuffer(clock)
    for _ in range(10):
        assert buffer.refusal(SECOND, limit_s=10) is None
        buffer.append(SECOND)
    refusal = buffer.refusal(SECOND, limit_s=10)
    assert refusal is not None
    assert (refusal["code"], refusal["ahead_s"], refusal["limit_s"]) == ("audio_ahead", 10.0, 10)
    clock.now += 3.0  # three seconds later, and no final: room for three seconds more
    for _ in range(3):
        assert buffer.refusal(SECOND, limit_s=10) is None
        buffer.append(SECOND)
    assert buffer.refusal(SECOND, limit_s=10) is not None


def test_a_final_makes_room_for_more() -> None:
    buffer = SessionBuffer(FakeClock())
    for _ in range(10):
        buffer.append(SECOND)
    assert buffer.refusal(SECOND, limit_s=10) is not None
    buffer.drop_until(4.0)  # a final covered the first four seconds
    assert buffer.refusal(SECOND, limit_s=10) is None
    assert len(buffer.replay_since_last_final()) == 6 * len(SECOND)
