"""Request-rate and concurrent-session limits: pure bookkeeping, unit-tested alone.

Two limits apply to every client key and to the gateway replica as a whole:

* requests per minute: HTTP requests and new streaming sessions, counted in a
  sliding 60 s window (at most N in any 60 s, not N per calendar minute);
* concurrent streaming sessions: a slot is taken when a session is admitted and
  given back when it ends.

A refused call is never queued: the caller gets a :class:`Refusal` at once, with
how long to wait before trying again. Nothing here awaits, so a check and the
booking that follows it cannot interleave with another request's. ``key=None``
is an anonymous caller (auth is off): only the overall limits apply to it, since
every anonymous client would otherwise share one per-key budget.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

Clock = Callable[[], float]
LimitScope = Literal["key", "total"]

RATE_WINDOW_S = 60.0


@dataclass(frozen=True)
class Refusal:
    """Why a request or session was turned away, and when to try again."""

    code: Literal["rate_limited", "busy"]
    message: str
    retry_after_s: float
    scope: LimitScope

    @property
    def retry_after(self) -> int:
        """Whole seconds to wait (the ``Retry-After`` header value), at least 1."""
        return max(1, math.ceil(self.retry_after_s))


class SlidingWindow:
    """At most ``limit`` events in any ``window_s`` seconds."""

    def __init__(self, limit: int, window_s: float = RATE_WINDOW_S) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self.window_s = window_s
        self._events: deque[float] = deque()

    def _forget_before(self, now: float) -> None:
        horizon = now - self.window_s
        while self._events and self._events[0] <= horizon:
            self._events.popleft()

    def wait_s(self, now: float) -> float:
        """0 when one more event fits now, else seconds until the oldest leaves the window."""
        self._forget_before(now)
        if len(self._events) < self.limit:
            return 0.0
        return self._events[len(self._events) - self.limit] + self.window_s - now

    def record(self, now: float) -> None:
        """Count one event at ``now``."""
        self._events.append(now)

    def count(self, now: float) -> int:
        """Events inside the window ending at ``now``."""
        self._forget_before(now)
        return len(self._events)


class RequestRate:
    """Requests per minute, per key and overall."""

    def __init__(
        self,
        per_key: int,
        total: int,
        *,
        window_s: float = RATE_WINDOW_S,
        clock: Clock = time.monotonic,
    ) -> None:
        self.per_key = per_key
        self.window_s = window_s
        self.clock = clock
        self.total = SlidingWindow(total, window_s)
        self._keys: dict[str, SlidingWindow] = {}

    def _window(self, key: str) -> SlidingWindow:
        window = self._keys.get(key)
        if window is None:
            window = self._keys[key] = SlidingWindow(self.per_key, self.window_s)
        return window

    def refusal(self, key: str | None, now: float) -> Refusal | None:
        """Why one more request of ``key`` at ``now`` does not fit, or None when it does."""
        if key is not None:
            wait = self._window(key).wait_s(now)
            if wait > 0:
                return Refusal(
                    "rate_limited",
                    f"this key is over {self.per_key} requests per minute",
                    wait,
                    "key",
                )
        wait = self.total.wait_s(now)
        if wait > 0:
            return Refusal(
                "rate_limited",
                f"the gateway is over {self.total.limit} requests per minute",
                wait,
                "total",
            )
        return None

    def record(self, key: str | None, now: float) -> None:
        """Count one admitted request."""
        self.total.record(now)
        if key is not None:
            self._window(key).record(now)
        self._forget_idle_keys(now)

    def admit(self, key: str | None) -> Refusal | None:
        """Count one request now if it fits; otherwise the refusal (nothing counted)."""
        now = self.clock()
        refused = self.refusal(key, now)
        if refused is None:
            self.record(key, now)
        return refused

    def set_limits(self, per_key: int, total: int) -> None:
        """New limits for every key and overall (a configuration reload); counts are kept."""
        self.per_key = per_key
        self.total.limit = total
        for window in self._keys.values():
            window.limit = per_key

    def _forget_idle_keys(self, now: float) -> None:
        # Keys are few (configured), but a window with nothing in it holds no
        # information: drop it so the table cannot grow without bound.
        if len(self._keys) > 64:
            for key in [k for k, w in self._keys.items() if not w.count(now)]:
                del self._keys[key]


class SessionSlots:
    """Concurrent streaming sessions, per key and overall."""

    def __init__(self, per_key: int, total: int, *, retry_after_s: float = 2.0) -> None:
        self.per_key = per_key
        self.total = total
        self.retry_after_s = retry_after_s
        self.active = 0
        self._by_key: dict[str, int] = {}

    def held_by(self, key: str | None) -> int:
        """Sessions ``key`` holds now (all anonymous ones for None)."""
        return self.active if key is None else self._by_key.get(key, 0)

    def refusal(self, key: str | None) -> Refusal | None:
        """Why one more session for ``key`` does not fit, or None when it does."""
        if key is not None and self._by_key.get(key, 0) >= self.per_key:
            return Refusal(
                "busy",
                f"this key already holds {self.per_key} concurrent sessions",
                self.retry_after_s,
                "key",
            )
        if self.active >= self.total:
            return Refusal(
                "busy",
                f"the gateway already serves {self.total} concurrent sessions",
                self.retry_after_s,
                "total",
            )
        return None

    def take(self, key: str | None) -> None:
        """Hold one slot for ``key`` (call only after ``refusal`` said it fits)."""
        self.active += 1
        if key is not None:
            self._by_key[key] = self._by_key.get(key, 0) + 1

    def release(self, key: str | None) -> None:
        """Give back one slot of ``key``."""
        self.active = max(0, self.active - 1)
        if key is not None:
            left = self._by_key.get(key, 0) - 1
            if left > 0:
                self._by_key[key] = left
            else:
                self._by_key.pop(key, None)


class GatewayLimits:
    """Both limits of one gateway replica; a new session must pass both."""

    def __init__(
        self,
        *,
        requests_per_key: int,
        requests_total: int,
        sessions_per_key: int,
        sessions_total: int,
        busy_retry_after_s: float = 2.0,
        clock: Clock = time.monotonic,
    ) -> None:
        self.rate = RequestRate(requests_per_key, requests_total, clock=clock)
        self.sessions = SessionSlots(
            sessions_per_key, sessions_total, retry_after_s=busy_retry_after_s
        )

    def set_limits(
        self,
        *,
        requests_per_key: int,
        requests_total: int,
        sessions_per_key: int,
        sessions_total: int,
        busy_retry_after_s: float,
    ) -> None:
        """Apply new limits now; sessions already held stay, new ones must fit the new limits."""
        self.rate.set_limits(requests_per_key, requests_total)
        self.sessions.per_key = sessions_per_key
        self.sessions.total = sessions_total
        self.sessions.retry_after_s = busy_retry_after_s

    def admit_request(self, key: str | None) -> Refusal | None:
        """Count one HTTP request, or say why it is refused."""
        return self.rate.admit(key)

    def admit_session(self, key: str | None) -> Refusal | None:
        """Count a new session and hold its slot, or say why it is refused (nothing held)."""
        now = self.rate.clock()
        refused = self.sessions.refusal(key) or self.rate.refusal(key, now)
        if refused is None:
            self.rate.record(key, now)
            self.sessions.take(key)
        return refused

    def end_session(self, key: str | None) -> None:
        """A session admitted for ``key`` has ended."""
        self.sessions.release(key)
