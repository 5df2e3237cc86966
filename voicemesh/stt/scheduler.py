"""Runs decodes on worker threads, finals before partials, in batches when it pays.

One scheduler per engine process. Sessions submit blocks with a priority; the
workers always take the most urgent job first, so a final never waits behind
another session's partial, and a partial whose session has moved on is dropped
before it costs any CPU. A partial that waited so long for a worker that it is
stale is dropped too (:class:`PartialShed`); the session asks again with fresher
audio.

When the engine can decode several blocks in one call (``transcribe_batch``) and
``batch_max`` > 1, a worker that takes a job also takes the jobs of the same kind
that are ready within ``batch_wait_s`` (a few ms, so no job waits on a batch
filling), and decodes them together: one encoder pass and one beam search for all
of them, which is what a GPU needs to serve many streams. Every decode is recorded
in the :class:`~voicemesh.stt.load.LoadMeter` that admission and shedding read.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import numpy as np

from voicemesh.errors import ModelUnloaded, PartialShed
from voicemesh.protocol import SAMPLE_RATE
from voicemesh.stt.load import AdmissionPolicy, LoadMeter
from voicemesh.stt.types import Transcriber, TranscriptionResult

_LOGGER = logging.getLogger(__name__)


class Priority(IntEnum):
    """Lower runs first."""

    FINAL = 0
    SPECULATIVE = 1
    FIRST_PARTIAL = 2
    PARTIAL = 3
    BATCH = 4


ESSENTIAL = (Priority.FINAL, Priority.SPECULATIVE)
"""Decodes that produce finals: never shed, and what admission budgets for."""
PARTIALS = (Priority.FIRST_PARTIAL, Priority.PARTIAL)
_KINDS = {
    Priority.FINAL: "finals",
    Priority.SPECULATIVE: "finals",
    Priority.FIRST_PARTIAL: "partials",
    Priority.PARTIAL: "partials",
}
BATCHABLE_KWARGS = frozenset({"language", "prefix", "beam_size", "quality_fallback", "prompt"})
"""Keyword arguments ``transcribe_batch`` takes per item; other ones decode alone."""


@dataclass
class _Job:
    audio: np.ndarray
    kwargs: dict[str, Any]
    future: asyncio.Future[TranscriptionResult]
    loop: asyncio.AbstractEventLoop
    queued_at: float
    priority: Priority

    def batch_key(self) -> tuple[object, ...] | None:
        """Jobs with equal keys may share a batched call; None: this one decodes alone."""
        if set(self.kwargs) - BATCHABLE_KWARGS or self.priority == Priority.BATCH:
            return None
        return (
            self.priority in ESSENTIAL,
            self.kwargs.get("beam_size"),
            self.kwargs.get("language"),
            bool(self.kwargs.get("quality_fallback", True)),
            # CTranslate2 needs <|startoftranscript|> at one position across a batch, so
            # only blocks with the same context (most often none) share a batch; a
            # shortened context would change the words.
            self.kwargs.get("prompt") or None,
        )


# (priority, submission order, job); None as the job stops a worker.
_Entry = tuple[int, int, _Job | None]


class DecodeScheduler:
    """A priority queue of decode jobs served by ``workers`` threads."""

    def __init__(
        self,
        transcriber: Transcriber | None,
        workers: int = 1,
        postprocess: Callable[[TranscriptionResult], TranscriptionResult] | None = None,
        *,
        policy: AdmissionPolicy | None = None,
        batch_max: int = 1,
        batch_wait_s: float = 0.005,
    ) -> None:
        self.transcriber = transcriber
        """The engine; None while the replica's model is unloaded (decodes then refused)."""
        self.postprocess = postprocess
        """Applied to every result on the worker thread (e.g. the Chinese script)."""
        self.meter = LoadMeter(workers, policy)
        can_batch = callable(getattr(transcriber, "transcribe_batch", None))
        self.batch_max = max(1, batch_max) if can_batch else 1
        self.batch_wait_s = batch_wait_s
        self._queue: queue.PriorityQueue[_Entry] = queue.PriorityQueue()
        self._seq = itertools.count()
        self._threads = [
            threading.Thread(target=self._work, name=f"decode-{i}", daemon=True)
            for i in range(max(1, workers))
        ]
        self._busy = 0
        self._lock = threading.Lock()
        self._rtf: deque[float] = deque(maxlen=50)
        self._latency_s: deque[float] = deque(maxlen=50)
        self.decodes = 0
        self.batches: deque[int] = deque(maxlen=200)
        """Sizes of recent batched calls (1 for a job decoded alone)."""
        for thread in self._threads:
            thread.start()

    @property
    def queue_depth(self) -> int:
        """Jobs waiting (not counting the ones running)."""
        return self._queue.qsize()

    @property
    def busy(self) -> int:
        """Jobs running now."""
        return self._busy

    @property
    def recent_batch(self) -> float | None:
        """Mean size of recent decode calls (1.0 without batching); None before any."""
        return round(float(np.mean(self.batches)), 2) if self.batches else None

    @property
    def recent_rtf(self) -> float | None:
        """Mean real-time factor (decode seconds per audio second) of recent decodes."""
        return round(float(np.mean(self._rtf)), 3) if self._rtf else None

    @property
    def recent_latency_ms(self) -> float | None:
        """Mean time of recent decodes from queued to done, in milliseconds."""
        return round(float(np.mean(self._latency_s)) * 1000, 1) if self._latency_s else None

    async def decode(
        self, audio: np.ndarray, priority: Priority, **kwargs: Any
    ) -> TranscriptionResult:
        """Queue one block and wait for its result; cancelling drops it if not started.

        A partial may instead raise :class:`PartialShed` when it went stale in the queue.
        """
        if self.transcriber is None:
            raise ModelUnloaded("this replica's model is unloaded; use another replica")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TranscriptionResult] = loop.create_future()
        job = _Job(audio, kwargs, future, loop, time.perf_counter(), priority)
        self._count_waiting(job, +1)
        self._queue.put((int(priority), next(self._seq), job))
        return await future

    def close(self) -> None:
        """Stop the workers after the jobs already queued."""
        for _ in self._threads:
            self._queue.put((int(Priority.BATCH) + 1, next(self._seq), None))

    def _count_waiting(self, job: _Job, delta: int) -> None:
        with self._lock:
            if job.priority in ESSENTIAL:
                self.meter.essential_waiting += delta
            elif job.priority in PARTIALS:
                self.meter.partials_waiting += delta

    def _take(self, job: _Job) -> bool:
        """A job leaves the queue; False when it is not to be run (cancelled or stale)."""
        self._count_waiting(job, -1)
        if job.future.cancelled():
            return False
        waited = time.perf_counter() - job.queued_at
        if job.priority in PARTIALS and waited > self.meter.policy.stale_partial_s:
            self.meter.note_shed("partial_stale")
            job.loop.call_soon_threadsafe(_set_exception, job.future, PartialShed())
            return False
        return True

    def _gather(self, first: _Job) -> list[_Job]:
        """``first`` and the jobs that may join its batch within ``batch_wait_s``."""
        key = first.batch_key()
        batch = [first]
        if self.batch_max <= 1 or key is None:
            return batch
        deadline = time.perf_counter() + self.batch_wait_s
        while len(batch) < self.batch_max:
            try:
                entry = self._queue.get(timeout=max(0.0, deadline - time.perf_counter()))
            except queue.Empty:
                break
            job = entry[2]
            if job is None or job.batch_key() != key:
                self._queue.put(entry)  # same order number: it keeps its place
                break
            if self._take(job):
                batch.append(job)
        return batch

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            if not self._take(job):
                continue
            batch = self._gather(job)
            with self._lock:
                self._busy += len(batch)
            started = time.perf_counter()
            try:
                results = self._run(batch)
            except Exception as exc:
                if isinstance(exc, ModelUnloaded):  # the admin's doing, not a fault
                    _LOGGER.info("%d queued decode(s) dropped: %s", len(batch), exc.message)
                else:
                    _LOGGER.exception("decode failed")
                for item in batch:
                    item.loop.call_soon_threadsafe(_set_exception, item.future, exc)
            else:
                done = time.perf_counter()
                seconds = max(sum(len(item.audio) for item in batch) / SAMPLE_RATE, 1e-3)
                self._rtf.append((done - started) / seconds)
                self.batches.append(len(batch))
                share = (done - started) / len(batch)
                for item, result in zip(batch, results, strict=True):
                    self._latency_s.append(done - item.queued_at)
                    self.meter.record(
                        item.queued_at,
                        started,
                        started + share,
                        essential=item.priority in ESSENTIAL,
                        kind=_KINDS.get(item.priority, "files"),
                    )
                    self.decodes += 1
                    item.loop.call_soon_threadsafe(_set_result, item.future, result)
            finally:
                with self._lock:
                    self._busy -= len(batch)

    def _run(self, batch: list[_Job]) -> list[TranscriptionResult]:
        transcriber = self.transcriber
        if transcriber is None:  # unloaded while the job waited
            raise ModelUnloaded("this replica's model was unloaded; use another replica")
        if len(batch) == 1:
            results = [transcriber.transcribe(batch[0].audio, **batch[0].kwargs)]
        else:
            results = transcriber.transcribe_batch(  # type: ignore[attr-defined]
                [item.audio for item in batch], [item.kwargs for item in batch]
            )
        if self.postprocess is not None:
            results = [self.postprocess(result) for result in results]
        return results


def _set_result(future: asyncio.Future[TranscriptionResult], result: TranscriptionResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[TranscriptionResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
