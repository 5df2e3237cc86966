"""The benchmark's latency definitions on hand-made sessions."""

from __future__ import annotations

import pytest

from client.mic import Backoff
from client.stats import chunk_latencies, distribution, jitter, session_stats, summarize
from client.streaming import StreamResult

pytestmark = pytest.mark.unit


def session(final_at: float = 5.3) -> StreamResult:
    """4 s of speech + 1 s of silence sent in 1 s frames at t = 1..5; two partials, a final."""
    result = StreamResult(speech_seconds=4.0, sent_seconds=5.0, last_sent_at=5.0)
    result.sent = [(float(t), float(t), 32000) for t in range(1, 6)]
    result.messages = [
        (0.0, {"type": "ready"}),
        (1.5, {"type": "partial", "text": "", "end": 1.0}),
        (2.4, {"type": "partial", "text": "hello", "end": 2.0}),
        (
            final_at,
            {"type": "final", "text": "hello world", "start": 0.2, "end": 3.9, "latency_ms": 300.0},
        ),
    ]
    return result


def test_chunk_latency_is_receive_time_minus_when_its_audio_left() -> None:
    chunks = chunk_latencies(session())
    assert [kind for _, _, kind in chunks] == ["partial", "partial", "final"]
    assert [latency for _, latency, _ in chunks] == pytest.approx([0.5, 0.4, 1.3])


def test_session_stats_at_real_time_pace() -> None:
    stats = session_stats(session(), realtime=True, slack_s=2.0)
    assert stats["first_token_latency_s"] == 2.4  # the first message with text
    assert stats["end_to_end_latency_s"] == pytest.approx(1.3)  # 4 s of speech left at t=4
    assert stats["rtf"] == pytest.approx(5.3 / 4.0)
    assert stats["send_s"] == 4.0  # the frame holding the last sample of speech left at t=4
    assert stats["is_real_time"]
    assert stats["chunk_latency_s"]["count"] == 3
    assert stats["jitter_s"] == pytest.approx((0.1 + 0.9) / 2)
    assert stats["server_final_latency_ms"]["median"] == 300.0
    assert stats["transcript"] == "hello world"
    late = session_stats(session(final_at=7.0), realtime=True, slack_s=2.0)
    assert late["end_to_end_latency_s"] == pytest.approx(3.0) and not late["is_real_time"]


def test_fast_sessions_are_real_time_below_rtf_one() -> None:
    fast = session(final_at=3.5)
    assert session_stats(fast, realtime=False)["is_real_time"]
    assert not session_stats(session(final_at=4.5), realtime=False)["is_real_time"]


def test_a_session_without_final_is_not_real_time() -> None:
    result = session()
    result.messages = result.messages[:3]
    stats = session_stats(result, realtime=True)
    assert stats["end_to_end_latency_s"] is None and not stats["is_real_time"]


def test_distribution_and_summary() -> None:
    assert distribution([])["median"] is None
    d = distribution([1.0, 2.0, 3.0, 4.0])
    assert (d["count"], d["mean"], d["median"], d["max"]) == (4, 2.5, 2.5, 4.0)
    assert d["p95"] == pytest.approx(3.85) and d["p99"] == pytest.approx(3.97)
    assert jitter([1.0]) is None
    sessions = [
        session_stats(session(), realtime=True),
        session_stats(session(final_at=7.0), realtime=True),
    ]
    summary = summarize(sessions, failed=1)
    assert (summary["sessions"], summary["completed"], summary["failed"]) == (3, 2, 1)
    assert summary["real_time_sessions"] == 1 and not summary["all_real_time"]
    assert summary["end_to_end_latency_s"]["max"] == pytest.approx(3.0)


def test_backoff_doubles_up_to_its_ceiling() -> None:
    assert Backoff(first_s=0.5, max_s=3.0, attempts=5).delays() == [0.5, 1.0, 2.0, 3.0, 3.0]
