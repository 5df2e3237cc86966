"""Request-rate and session limits: pure bookkeeping on an injected clock."""

from __future__ import annotations

import pytest

from gateway.limits import GatewayLimits, Refusal, RequestRate, SessionSlots, SlidingWindow

pytestmark = pytest.mark.unit


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_sliding_window_allows_the_limit_then_waits_for_the_oldest_event() -> None:
    window = SlidingWindow(3, window_s=60.0)
    for t in (0.0, 10.0, 20.0):
        assert window.wait_s(t) == 0.0
        window.record(t)

    assert window.wait_s(30.0) == pytest.approx(30.0)  # the event at 0 leaves at 60
    assert window.wait_s(59.9) == pytest.approx(0.1)
    assert window.wait_s(60.0) == 0.0
    window.record(60.0)
    assert window.wait_s(61.0) == pytest.approx(9.0)  # next to leave: the event at 10
    assert window.count(61.0) == 3


def test_sliding_window_is_not_a_calendar_minute() -> None:
    window = SlidingWindow(2, window_s=60.0)
    window.record(59.0)
    window.record(59.5)
    # A fixed-minute counter would reset at 60; a sliding window still holds both.
    assert window.wait_s(60.5) == pytest.approx(58.5)


def test_rate_is_per_key_and_keys_do_not_share_a_budget() -> None:
    clock = FakeClock()
    rate = RequestRate(per_key=2, total=100, clock=clock)
    assert rate.admit("a") is None
    assert rate.admit("a") is None

    refused = rate.admit("a")

    assert refused is not None
    assert (refused.code, refused.scope) == ("rate_limited", "key")
    assert refused.retry_after_s == pytest.approx(60.0)
    assert rate.admit("b") is None  # another key is untouched
    clock.advance(60.0)
    assert rate.admit("a") is None


def test_total_rate_refuses_every_key_once_full() -> None:
    clock = FakeClock()
    rate = RequestRate(per_key=10, total=3, clock=clock)
    assert [rate.admit(k) for k in ("a", "b", None)] == [None, None, None]
    clock.advance(15.0)

    refused = rate.admit("c")

    assert refused is not None and refused.scope == "total"
    assert refused.retry_after_s == pytest.approx(45.0)
    assert refused.retry_after == 45


def test_refused_request_is_not_counted() -> None:
    clock = FakeClock()
    rate = RequestRate(per_key=1, total=100, clock=clock)
    assert rate.admit("a") is None
    for _ in range(5):
        clock.advance(1.0)
        assert rate.admit("a") is not None
    clock.advance(55.0)  # 60 s after the one admitted request
    assert rate.admit("a") is None
    assert rate.total.count(clock()) == 1


def test_anonymous_callers_are_held_only_to_the_total() -> None:
    rate = RequestRate(per_key=1, total=3, clock=FakeClock())
    assert [rate.admit(None) for _ in range(3)] == [None, None, None]
    refused = rate.admit(None)
    assert refused is not None and refused.scope == "total"


def test_idle_keys_are_forgotten() -> None:
    clock = FakeClock()
    rate = RequestRate(per_key=5, total=10_000, clock=clock)
    for i in range(200):
        rate.admit(f"key-{i}")
    clock.advance(61.0)
    rate.admit("late")
    assert len(rate._keys) == 1


def test_retry_after_is_whole_seconds_and_at_least_one() -> None:
    assert Refusal("busy", "", 0.2, "key").retry_after == 1
    assert Refusal("busy", "", 2.01, "key").retry_after == 3
    assert Refusal("busy", "", 5.0, "key").retry_after == 5


def test_session_slots_per_key_and_total() -> None:
    slots = SessionSlots(per_key=1, total=2, retry_after_s=4.0)
    assert slots.refusal("a") is None
    slots.take("a")

    per_key = slots.refusal("a")
    assert per_key is not None
    assert (per_key.code, per_key.scope, per_key.retry_after) == ("busy", "key", 4)

    assert slots.refusal("b") is None
    slots.take("b")
    total = slots.refusal("c")
    assert total is not None and total.scope == "total"

    slots.release("a")
    assert slots.refusal("a") is None
    assert (slots.active, slots.held_by("a"), slots.held_by("b")) == (1, 0, 1)


def test_releasing_more_than_held_never_goes_negative() -> None:
    slots = SessionSlots(per_key=1, total=1)
    slots.release("a")
    assert slots.active == 0
    assert slots.refusal("a") is None


def test_session_needs_a_slot_and_a_place_in_the_rate() -> None:
    clock = FakeClock()
    limits = GatewayLimits(
        requests_per_key=2, requests_total=100, sessions_per_key=5, sessions_total=5, clock=clock
    )
    assert limits.admit_session("a") is None
    limits.end_session("a")
    assert limits.admit_request("a") is None

    refused = limits.admit_session("a")

    assert refused is not None and refused.code == "rate_limited"
    assert limits.sessions.active == 0  # a refused session holds no slot
    clock.advance(60.0)
    assert limits.admit_session("a") is None
    assert limits.sessions.held_by("a") == 1


def test_session_refused_for_slots_does_not_use_up_the_rate() -> None:
    clock = FakeClock()
    limits = GatewayLimits(
        requests_per_key=2, requests_total=100, sessions_per_key=1, sessions_total=5, clock=clock
    )
    assert limits.admit_session("a") is None
    for _ in range(3):
        refused = limits.admit_session("a")
        assert refused is not None and refused.code == "busy"
    limits.end_session("a")
    assert limits.admit_session("a") is None  # the second of two in the minute
