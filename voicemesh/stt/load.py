"""How loaded an STT replica is, measured, and what it does about it.

Every decode the scheduler runs is recorded here (when it was queued, started and
done, and whether it was *essential*: a final or the speculative decode of one).
From the last ``window_s`` of those records:

* ``utilization``: the share of the decode workers' time spent decoding;
* ``final_wait_s``: how long essential decodes waited for a worker (p90);
* ``essential_per_session``: worker-seconds per second that finals take per live
  session, the part of a session's cost that cannot be shed.

Admission (:meth:`LoadMeter.refusal`) refuses a new session, with the reason, when
finals already wait too long, or when the finals of one more session would not fit
in the workers' time. Partials are what gives way first under load
(:meth:`LoadMeter.partial_allowed`, :meth:`LoadMeter.partial_interval_factor`): a
partial is skipped while a final waits, spaced out as the workers fill, and dropped
when it waited so long it is stale; finals fall back to greedy decoding when they
would otherwise queue. Every shed is counted.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

_LOGGER = logging.getLogger(__name__)

SHED_LOG_EVERY_S = 10.0
"""Sheds are logged together, at most this often."""


@dataclass(frozen=True)
class AdmissionPolicy:
    """Thresholds of admission and shedding (from the service's settings)."""

    window_s: float = 10.0
    """How far back the meter looks."""
    max_final_wait_s: float = 0.5
    """Refuse new sessions while finals wait longer than this for a worker (p90)."""
    max_essential_share: float = 0.4
    """Refuse a session when the finals of all sessions and it would take more than this
    share of the workers' time (the rest is for partials and the machine's other work)."""
    shed_utilization: float = 0.7
    """Above this utilization partials are spaced out."""
    stale_partial_s: float = 1.0
    """A partial that waited longer than this for a worker is dropped unrun."""
    greedy_final_wait_s: float = 0.3
    """Finals decode greedily (no beam) while essential decodes wait longer than this."""
    retry_after_s: int = 3
    """Seconds a refused client is told to wait."""


@dataclass
class _Record:
    done: float
    busy_s: float
    wait_s: float
    essential: bool


class LoadMeter:
    """Thread-safe record of recent decodes, and the decisions drawn from it."""

    def __init__(
        self,
        workers: int,
        policy: AdmissionPolicy | None = None,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        self.workers = max(1, workers)
        self.policy = policy or AdmissionPolicy()
        self.clock = clock
        self.started = clock()
        self._records: deque[_Record] = deque()
        self._sessions: deque[tuple[float, int]] = deque()
        """(when, live sessions) at each open and close within the window."""
        self._lock = threading.Lock()
        self._utilization = (-1.0, 0.0)
        self._factor = (-1.0, 1.0)
        self.essential_waiting = 0
        """Essential decodes queued and not started (kept by the scheduler)."""
        self.partials_waiting = 0
        """Partial decodes queued and not started (kept by the scheduler)."""
        self.busy_s: dict[str, float] = defaultdict(float)
        """Worker-seconds spent decoding since start, by kind (finals, partials)."""
        self.decodes: Counter[str] = Counter()
        """Decodes run since start, by kind."""
        self.shed: Counter[str] = Counter()
        """Sheds by kind: partial_skipped, partial_stale, final_greedy."""
        self.refused: Counter[str] = Counter()
        """Refused sessions by reason kind: final_wait, capacity, limit, draining."""
        self._shed_logged_at = -SHED_LOG_EVERY_S
        self._shed_at_log: Counter[str] = Counter()
        self.on_shed: Callable[[str], None] | None = None
        """Told of every shed (the service counts them in its metrics)."""

    def note_shed(self, kind: str) -> None:
        """Count one piece of work shed under load; log what was shed, every 10 s at most."""
        self.shed[kind] += 1
        if self.on_shed is not None:
            self.on_shed(kind)
        now = self.clock()
        if now - self._shed_logged_at >= SHED_LOG_EVERY_S:
            since = self.shed - self._shed_at_log
            self._shed_logged_at, self._shed_at_log = now, Counter(self.shed)
            _LOGGER.warning(
                "shedding under load (workers %.0f%% busy, finals wait %.2f s): %s",
                100 * self.utilization(),
                self.final_wait_s(),
                ", ".join(f"{k} {v}" for k, v in sorted(since.items())),
            )

    # ------------------------------------------------------------------ records

    def record(
        self,
        queued_at: float,
        started: float,
        done: float,
        *,
        essential: bool,
        kind: str | None = None,
    ) -> None:
        """One decode finished (``kind`` for the totals: finals, partials or files)."""
        kind = kind or ("finals" if essential else "partials")
        with self._lock:
            self._records.append(_Record(done, done - started, started - queued_at, essential))
            self._trim(done)
            self.busy_s[kind] += done - started
            self.decodes[kind] += 1

    def note_sessions(self, live: int) -> None:
        """The replica's live sessions changed (a session opened or closed)."""
        now = self.clock()
        with self._lock:
            self._sessions.append((now, live))
            self._trim(now)

    def _trim(self, now: float) -> None:
        horizon = now - self.policy.window_s
        while self._records and self._records[0].done < horizon:
            self._records.popleft()
        # Keep the last change before the horizon: it says how many ran from there on.
        while len(self._sessions) > 1 and self._sessions[1][0] < horizon:
            self._sessions.popleft()

    def _recent(self) -> tuple[list[_Record], float]:
        now = self.clock()
        with self._lock:
            self._trim(now)
            records = list(self._records)
        span = min(self.policy.window_s, max(now - self.started, 1e-3))
        return records, span

    # ------------------------------------------------------------------ measures

    def utilization(self) -> float:
        """Share of the workers' time spent decoding lately (0..1); cached for 0.2 s,
        since every session asks on every frame."""
        at, value = self._utilization
        now = self.clock()
        if now - at < 0.2:
            return value
        records, span = self._recent()
        value = min(1.0, sum(r.busy_s for r in records) / (self.workers * span))
        self._utilization = (now, value)
        return value

    def final_wait_s(self) -> float:
        """p90 of how long recent essential decodes waited for a worker (0 without any)."""
        waits = [r.wait_s for r in self._recent()[0] if r.essential]
        return float(np.percentile(waits, 90)) if waits else 0.0

    def essential_per_session(self, sessions: int) -> float:
        """Worker-seconds per second that finals take, per session, lately: divided by the
        most sessions that ran in that time, not by those left now (a session that just
        ended made its share of the finals; charging it to the others would refuse its
        successor)."""
        records, span = self._recent()
        busy = sum(r.busy_s for r in records if r.essential)
        with self._lock:
            peak = max((live for _, live in self._sessions), default=0)
        return busy / span / max(1, sessions, peak)

    # ------------------------------------------------------------------ decisions

    def refusal(self, sessions: int) -> tuple[str, str] | None:
        """Why a new session must be refused now, as (kind, message), or None to admit."""
        policy = self.policy
        if sessions < self.workers:
            # Fewer sessions than workers: a new one gets a worker of its own, so
            # whatever the waits were, they were not these sessions' doing (a busy
            # machine, sessions now gone); refusing would leave a worker idle.
            return None
        wait = self.final_wait_s()
        if wait > policy.max_final_wait_s:
            return (
                "final_wait",
                f"finals wait {wait:.2f} s for a decode worker here (limit "
                f"{policy.max_final_wait_s:g} s): the replica is at capacity",
            )
        if self.clock() - self.started >= policy.window_s / 2:
            per_session = self.essential_per_session(sessions)
            budget = policy.max_essential_share * self.workers
            if (sessions + 1) * per_session > budget:
                return (
                    "capacity",
                    f"{sessions} sessions take {per_session:.3f} worker-s/s each for finals; "
                    f"one more would pass {budget:.2f} of {self.workers} workers",
                )
        return None

    def partial_allowed(self, *, first: bool) -> bool:
        """Whether a session may queue a partial now (a first partial of an utterance
        waits only for finals; later ones also for other partials)."""
        if first:
            return True
        return self.essential_waiting == 0 and self.partials_waiting < self.workers

    def partial_interval_factor(self) -> float:
        """How much to space partials out: 1 while the workers have room, up to 4 as
        they fill up or as finals start to wait for them (the machine's other work takes
        cores too, so a worker can be half idle while finals already queue)."""
        at, value = self._factor
        now = self.clock()
        if now - at < 0.2:
            return value
        low = self.policy.shed_utilization
        busy = (self.utilization() - low) / max(1e-3, 1.0 - low)
        waiting = self.final_wait_s() / self.policy.max_final_wait_s
        value = 1.0 + 3.0 * min(1.0, max(0.0, busy, waiting))
        self._factor = (now, value)
        return value

    def greedy_finals(self) -> bool:
        """Whether finals should skip beam search to keep up."""
        return self.essential_waiting > 0 and self.final_wait_s() > self.policy.greedy_final_wait_s

    def summary(self) -> dict[str, object]:
        """What health and the registry show."""
        return {
            "utilization": round(self.utilization(), 3),
            "final_wait_s": round(self.final_wait_s(), 3),
            "shed": dict(self.shed),
            "refused": dict(self.refused),
            "busy_s": {k: round(v, 2) for k, v in self.busy_s.items()},
            "decodes": dict(self.decodes),
        }
