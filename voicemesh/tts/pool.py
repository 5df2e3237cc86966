"""Idle engine instances, lent to the waiting piece whose listener needs it soonest.

Under load the pieces of several streams take turns on the few engine instances. A
request whose first audio has not started has a listener in silence now; a stream
that is playing needs its next piece only when the audio it was given runs out
(:class:`PlaybackClock`). Borrows are served earliest deadline first: a new request's
first piece goes before a playing stream's next piece while that stream has audio in
hand, and after it once the stream would fall silent. First audio under load then
waits for one piece instead of the whole queue, without opening gaps in the streams
already playing.
"""

from __future__ import annotations

import heapq
import itertools
import queue
import threading
import time
from typing import Generic, TypeVar

T = TypeVar("T")


class EnginePool(Generic[T]):
    """Thread-safe: :meth:`get` an idle instance (earliest deadline first), :meth:`put` it."""

    def __init__(self) -> None:
        self._idle: list[T] = []
        self._waiting: list[tuple[float, int]] = []
        """Heap of (deadline, arrival): the head is served next."""
        self._tickets = itertools.count()
        self._cond = threading.Condition()

    @property
    def waiting(self) -> int:
        """Borrows waiting for an instance now."""
        with self._cond:
            return len(self._waiting)

    def put(self, instance: T) -> None:
        """Give an instance back (or add a new one)."""
        with self._cond:
            self._idle.append(instance)
            self._cond.notify_all()

    def get(self, timeout: float | None = None, *, deadline: float | None = None) -> T:
        """An idle instance, once every borrow with an earlier ``deadline`` (monotonic
        seconds; None: now) has had its turn; equal deadlines in arrival order.

        Raises :class:`queue.Empty` when none came within ``timeout`` seconds.
        """
        now = time.monotonic()
        give_up = None if timeout is None else now + timeout
        with self._cond:
            ticket = (now if deadline is None else deadline, next(self._tickets))
            heapq.heappush(self._waiting, ticket)
            try:
                while not (self._idle and self._waiting[0] == ticket):
                    remaining = None if give_up is None else give_up - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        raise queue.Empty
                    self._cond.wait(remaining)
                heapq.heappop(self._waiting)
                return self._idle.pop()
            finally:
                if ticket in self._waiting:  # gave up: the next in line may go
                    self._waiting.remove(ticket)
                    heapq.heapify(self._waiting)
                self._cond.notify_all()


class PlaybackClock:
    """When a stream's listener will need its next audio: the time the first piece was
    handed out plus the seconds of audio handed out since (None before the first)."""

    def __init__(self) -> None:
        self._started: float | None = None
        self._handed_out_s = 0.0

    def handed_out(self, seconds: float) -> None:
        """A piece of ``seconds`` of audio goes to the listener now."""
        if self._started is None:
            self._started = time.monotonic()
        self._handed_out_s += seconds

    def deadline(self) -> float | None:
        """Monotonic time the audio handed out so far runs out; None before any."""
        return None if self._started is None else self._started + self._handed_out_s
