"""The engine pool lends an idle instance to a stream's first piece before other waiters."""

from __future__ import annotations

import queue
import threading
import time

import pytest

from voicemesh.tts.pool import EnginePool

pytestmark = pytest.mark.unit


def _waiter(pool: EnginePool[str], order: list[str], name: str, urgent: bool) -> threading.Thread:
    def borrow() -> None:
        instance = pool.get(timeout=5, urgent=urgent)
        order.append(name)
        pool.put(instance)

    thread = threading.Thread(target=borrow)
    thread.start()
    return thread


def _until_waiting(pool: EnginePool[str], count: int, timeout_s: float = 2.0) -> None:
    deadline = time.monotonic() + timeout_s
    while pool.waiting != count and time.monotonic() < deadline:
        time.sleep(0.005)


def test_an_urgent_borrow_goes_before_earlier_ones_and_the_rest_keep_their_order() -> None:
    pool: EnginePool[str] = EnginePool()
    order: list[str] = []
    threads = []
    for name, urgent in (("later piece 1", False), ("later piece 2", False), ("first", True)):
        threads.append(_waiter(pool, order, name, urgent))
        _until_waiting(pool, len(threads))
    assert pool.waiting == 3  # all three wait: nothing is idle yet
    pool.put("engine")
    for thread in threads:
        thread.join(timeout=5)
    assert order == ["first", "later piece 1", "later piece 2"]


def test_a_borrow_that_times_out_leaves_the_line_and_the_next_is_served() -> None:
    pool: EnginePool[str] = EnginePool()
    with pytest.raises(queue.Empty):
        pool.get(timeout=0.05)
    assert pool.waiting == 0
    order: list[str] = []
    thread = _waiter(pool, order, "next", False)
    _until_waiting(pool, 1)
    pool.put("engine")
    thread.join(timeout=5)
    assert order == ["next"]
    assert pool.get(timeout=0.1) == "engine"
