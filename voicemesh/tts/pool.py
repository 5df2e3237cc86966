"""Idle engine instances, lent first to the pieces a listener is waiting on.

Under load every request holds its admission slot while it streams, and its pieces
take turns on the few engine instances. A request whose first audio has not started
yet has a listener in silence; one that is already playing has seconds of audio in
hand. So a borrow for a first piece goes before every other borrow waiting, and
first audio under load waits for one piece, not for the whole queue of them.
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
    """Thread-safe: :meth:`get` an idle instance (urgent borrows first), :meth:`put` it back."""

    def __init__(self) -> None:
        self._idle: list[T] = []
        self._waiting: list[tuple[int, int]] = []
        """Heap of (0 urgent / 1 not, arrival): the head is served next."""
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

    def get(self, timeout: float | None = None, *, urgent: bool = False) -> T:
        """An idle instance, once every borrow ahead of this one has had its turn.

        Raises :class:`queue.Empty` when none came within ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            ticket = (0 if urgent else 1, next(self._tickets))
            heapq.heappush(self._waiting, ticket)
            try:
                while not (self._idle and self._waiting[0] == ticket):
                    remaining = None if deadline is None else deadline - time.monotonic()
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
