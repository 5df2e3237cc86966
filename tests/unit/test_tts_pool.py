"""The engine pool lends an idle instance to the waiting piece needed soonest."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from voicemesh.tts.pool import EnginePool, PlaybackClock

pytestmark = pytest.mark.unit


def _waiter(
    pool: EnginePool[str], order: list[str], name: str, deadline: float | None
) -> threading.Thread:
    def borrow() -> None:
        instance = pool.get(timeout=5, deadline=deadline)
        order.append(name)
        pool.put(instance)

    thread = threading.Thread(target=borrow)
    thread.start()
    return thread


def _until_waiting(pool: EnginePool[str], count: int, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.waiting != count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_the_piece_needed_soonest_goes_first_and_equal_ones_keep_their_order() -> None:
    pool: EnginePool[str] = EnginePool()
    order: list[str] = []
    now = time.monotonic()
    waiters = (
        ("stream with 2 s in hand", now + 2.0),
        ("new request A", None),  # None: needed now
        ("stream about to fall silent", now - 0.1),
        ("new request B", None),
    )
    threads = []
    for name, deadline in waiters:
        threads.append(_waiter(pool, order, name, deadline))
        _until_waiting(pool, len(threads))
    assert pool.waiting == 4  # all wait: nothing is idle yet
    pool.put("engine")
    for thread in threads:
        thread.join(timeout=5)
    assert order == [
        "stream about to fall silent",
        "new request A",
        "new request B",
        "stream with 2 s in hand",
    ]


def test_a_borrow_that_times_out_leaves_the_line_and_the_next_is_served() -> None:
    pool: EnginePool[str] = EnginePool()
    with pytest.raises(queue.Empty):
        pool.get(timeout=0.05)
    assert pool.waiting == 0
    order: list[str] = []
    thread = _waiter(pool, order, "next", None)
    _until_waiting(pool, 1)
    pool.put("engine")
    thread.join(timeout=5)
    assert order == ["next"]
    assert pool.get(timeout=0.1) == "engine"


def test_the_playback_clock_runs_out_when_the_audio_handed_out_does() -> None:
    clock = PlaybackClock()
    assert clock.deadline() is None
    before = time.monotonic()
    clock.handed_out(0.28)
    clock.handed_out(2.5)
    deadline = clock.deadline()
    assert deadline is not None
    assert before + 2.78 <= deadline <= time.monotonic() + 2.78
