"""Admission and shedding from measured load, and the scheduler's batches and sheds.

The meter runs on a hand-moved clock; the scheduler on a scripted engine that
records how it was called, so every decision is checked without a model.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np
import pytest

from voicemesh.errors import PartialShed
from voicemesh.stt.load import AdmissionPolicy, LoadMeter
from voicemesh.stt.scheduler import DecodeScheduler, Priority
from voicemesh.stt.types import TranscriptionResult

pytestmark = pytest.mark.unit


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def meter(**policy: Any) -> tuple[LoadMeter, Clock]:
    clock = Clock()
    return LoadMeter(workers=2, policy=AdmissionPolicy(**policy), clock=clock), clock


def test_an_idle_replica_admits_and_does_not_shed() -> None:
    load, clock = meter()
    clock.now += 20
    assert load.refusal(sessions=5) is None
    assert load.utilization() == 0.0
    assert load.partial_interval_factor() == 1.0
    assert not load.greedy_finals()


def test_finals_that_wait_for_a_worker_close_admission_with_the_wait_in_the_reason() -> None:
    load, clock = meter(max_final_wait_s=0.8)
    clock.now += 10
    for i in range(10):
        # Each final waited 1.5 s in the queue, then ran for 0.2 s.
        done = clock.now - 5 + i * 0.4
        load.record(done - 1.7, done - 0.2, done, essential=True)
    assert load.refusal(sessions=1) is None, "fewer sessions than workers: one more fits"
    refusal = load.refusal(sessions=3)
    assert refusal is not None
    kind, message = refusal
    assert kind == "final_wait"
    assert "1.50 s" in message


def test_partials_that_wait_do_not_close_admission() -> None:
    load, clock = meter(max_final_wait_s=0.8)
    clock.now += 10
    for i in range(10):
        done = clock.now - 5 + i * 0.4
        load.record(done - 3.0, done - 0.2, done, essential=False)
    assert load.final_wait_s() == 0.0
    assert load.refusal(sessions=1) is None


def test_a_session_whose_finals_would_not_fit_is_refused() -> None:
    load, clock = meter(max_essential_share=0.6, window_s=10)
    clock.now += 10
    # Finals took 4 worker-seconds of the last 10 s: 0.4 per second, 0.1 per session
    # of four. A fifth brings it to 0.5, within 0.6 of 2 workers (1.2): admitted.
    for i in range(8):
        done = clock.now - 9 + i
        load.record(done - 0.5, done - 0.5, done, essential=True)
    assert load.essential_per_session(4) == pytest.approx(0.1)
    assert load.refusal(sessions=4) is None
    # Now 10 worker-seconds: 0.25 per session of four; five would need 1.25 > 1.2.
    for i in range(12):
        done = clock.now - 9 + i * 0.7
        load.record(done - 0.5, done - 0.5, done, essential=True)
    refusal = load.refusal(sessions=4)
    assert refusal is not None and refusal[0] == "capacity", refusal
    assert "4 sessions" in refusal[1]
    # The same work spread over nine sessions is cheaper each: a tenth fits (1.11).
    assert load.refusal(sessions=9) is None
    # With fewer sessions than workers, a new session gets a worker of its own.
    assert load.refusal(sessions=1) is None


def test_a_session_that_replaces_one_just_ended_is_not_charged_its_finals() -> None:
    load, clock = meter(max_essential_share=0.6, window_s=10)
    for live in (1, 2, 3, 4):
        load.note_sessions(live)
    clock.now += 10
    # Four sessions' finals: 10 worker-seconds of the last 10 s, 0.25 per session.
    for i in range(20):
        done = clock.now - 9.5 + i * 0.45
        load.record(done - 0.5, done - 0.5, done, essential=True)
    load.note_sessions(3)  # one ends; its successor opens a moment later
    assert load.essential_per_session(3) == pytest.approx(0.25)
    assert load.refusal(sessions=3) is None  # four again, as before: 1.0 <= 1.2
    # Once the fourth session is out of the window, the three carry the finals alone.
    clock.now += 11
    for i in range(20):
        done = clock.now - 9.5 + i * 0.45
        load.record(done - 0.5, done - 0.5, done, essential=True)
    assert load.essential_per_session(3) == pytest.approx(10 / 10 / 3)
    refusal = load.refusal(sessions=3)
    assert refusal is not None and refusal[0] == "capacity", refusal


def test_partials_are_spaced_out_and_skipped_as_the_workers_fill() -> None:
    load, clock = meter(shed_utilization=0.7)
    clock.now += 10
    for i in range(20):  # 2 workers busy 90 % of the last 10 s
        done = clock.now - 10 + (i + 1) * 0.5
        load.record(done - 0.9, done - 0.9, done, essential=False)
    assert load.utilization() == pytest.approx(0.9, abs=0.01)
    assert 1.0 < load.partial_interval_factor() <= 4.0
    load.essential_waiting = 1
    assert not load.partial_allowed(first=False)
    assert load.partial_allowed(first=True), "a first partial only waits for finals' turn"
    load.essential_waiting = 0
    load.partials_waiting = 2
    assert not load.partial_allowed(first=False)
    load.partials_waiting = 0
    assert load.partial_allowed(first=False)


def test_finals_go_greedy_only_while_finals_queue() -> None:
    load, clock = meter(greedy_final_wait_s=0.3)
    clock.now += 10
    for i in range(5):
        done = clock.now - 5 + i
        load.record(done - 1.0, done - 0.3, done, essential=True)
    assert not load.greedy_finals(), "nothing waits now"
    load.essential_waiting = 2
    assert load.greedy_finals()


# ---------------------------------------------------------------- the scheduler


class ScriptedEngine:
    """Returns each block's length as text; can hold the worker; records batch sizes."""

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.gate = threading.Event()
        self.gate.set()

    def transcribe(self, audio: np.ndarray, **_: Any) -> TranscriptionResult:
        self.gate.wait(10)
        self.calls.append(1)
        return TranscriptionResult(text=f"{audio.size}", duration=audio.size / 16000)

    def transcribe_batch(
        self, audios: list[np.ndarray], options: list[dict[str, Any]]
    ) -> list[TranscriptionResult]:
        self.gate.wait(10)
        self.calls.append(len(audios))
        return [TranscriptionResult(text=f"{a.size}", duration=a.size / 16000) for a in audios]


def block(samples: int) -> np.ndarray:
    return np.zeros(samples, dtype=np.float32)


KW = {"language": "en", "beam_size": 1, "prefix": None, "prompt": None, "quality_fallback": True}


async def test_ready_jobs_of_one_kind_share_a_batched_call_and_keep_their_results() -> None:
    engine = ScriptedEngine()
    scheduler = DecodeScheduler(engine, workers=1, batch_max=8, batch_wait_s=0.05)
    try:
        results = await asyncio.gather(
            *(scheduler.decode(block(1000 + i), Priority.PARTIAL, **KW) for i in range(5))
        )
    finally:
        scheduler.close()
    assert [r.text for r in results] == [str(1000 + i) for i in range(5)]
    assert max(engine.calls) >= 2, engine.calls
    assert sum(engine.calls) == 5
    assert scheduler.recent_batch == pytest.approx(5 / len(engine.calls))
    assert scheduler.meter.partials_waiting == 0


async def test_finals_and_partials_never_share_a_batch() -> None:
    engine = ScriptedEngine()
    engine.gate.clear()
    scheduler = DecodeScheduler(engine, workers=1, batch_max=8, batch_wait_s=0.05)
    try:
        blocker = asyncio.ensure_future(scheduler.decode(block(10), Priority.BATCH, language="en"))
        await asyncio.sleep(0.1)  # the worker holds the BATCH job
        jobs = [
            asyncio.ensure_future(scheduler.decode(block(100 + i), priority, **KW))
            for i, priority in enumerate([Priority.FINAL, Priority.PARTIAL, Priority.FINAL])
        ]
        await asyncio.sleep(0.05)
        engine.gate.set()
        results = await asyncio.gather(blocker, *jobs)
    finally:
        scheduler.close()
    assert [r.text for r in results] == ["10", "100", "101", "102"]
    # The BATCH job alone, then both finals together, then the partial.
    assert engine.calls == [1, 2, 1], engine.calls


async def test_a_partial_that_went_stale_in_the_queue_is_shed_unrun() -> None:
    engine = ScriptedEngine()
    engine.gate.clear()
    policy = AdmissionPolicy(stale_partial_s=0.2)
    scheduler = DecodeScheduler(engine, workers=1, policy=policy)
    try:
        blocker = asyncio.ensure_future(scheduler.decode(block(10), Priority.FINAL, **KW))
        await asyncio.sleep(0.05)
        partial = asyncio.ensure_future(scheduler.decode(block(20), Priority.PARTIAL, **KW))
        final = asyncio.ensure_future(scheduler.decode(block(30), Priority.FINAL, **KW))
        await asyncio.sleep(0.4)  # both wait longer than the partial may
        assert scheduler.meter.essential_waiting == 1
        assert scheduler.meter.partials_waiting == 1
        engine.gate.set()
        assert (await blocker).text == "10"
        assert (await final).text == "30", "a final is never shed"
        with pytest.raises(PartialShed):
            await partial
    finally:
        scheduler.close()
    assert scheduler.meter.shed["partial_stale"] == 1
    assert engine.calls == [1, 1]
    assert scheduler.meter.essential_waiting == 0
    assert scheduler.meter.partials_waiting == 0


async def test_every_run_decode_is_recorded_with_its_wait() -> None:
    engine = ScriptedEngine()
    scheduler = DecodeScheduler(engine, workers=1)
    started = time.perf_counter()
    try:
        await scheduler.decode(block(16000), Priority.FINAL, **KW)
        await scheduler.decode(block(16000), Priority.PARTIAL, **KW)
    finally:
        scheduler.close()
    assert 0 < scheduler.meter.utilization() <= 1
    assert scheduler.meter.final_wait_s() < time.perf_counter() - started
    assert scheduler.decodes == 2


def test_partials_space_out_when_finals_wait_even_with_workers_half_idle() -> None:
    """Other processes take cores too: finals can queue while the workers' own busy
    share is low. The wait alone spaces partials out."""
    load, clock = meter(shed_utilization=0.7, max_final_wait_s=1.0)
    clock.now += 10
    for i in range(4):  # little decoding, but each final waited 0.8 s for a worker
        done = clock.now - 8 + i * 2
        load.record(done - 1.0, done - 0.2, done, essential=True)
    assert load.utilization() < 0.1
    assert load.partial_interval_factor() == pytest.approx(1.0 + 3.0 * 0.8, abs=0.05)
