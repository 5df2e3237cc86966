"""Runs decodes on worker threads, finals before partials.

One scheduler per engine process. Sessions submit blocks with a priority; the
workers always take the most urgent job first, so a final never waits behind
another session's partial, and a partial whose session has moved on is dropped
before it costs any CPU.
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

from voicemesh.protocol import SAMPLE_RATE
from voicemesh.stt.types import Transcriber, TranscriptionResult

_LOGGER = logging.getLogger(__name__)


class Priority(IntEnum):
    """Lower runs first."""

    FINAL = 0
    SPECULATIVE = 1
    PARTIAL = 2
    BATCH = 3


@dataclass
class _Job:
    audio: np.ndarray
    kwargs: dict[str, Any]
    future: asyncio.Future[TranscriptionResult]
    loop: asyncio.AbstractEventLoop
    queued_at: float


# (priority, submission order, job); None as the job stops a worker.
_Entry = tuple[int, int, _Job | None]


class DecodeScheduler:
    """A priority queue of decode jobs served by ``workers`` threads."""

    def __init__(
        self,
        transcriber: Transcriber,
        workers: int = 1,
        postprocess: Callable[[TranscriptionResult], TranscriptionResult] | None = None,
    ) -> None:
        self.transcriber = transcriber
        self.postprocess = postprocess
        """Applied to every result on the worker thread (e.g. the Chinese script)."""
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
        """Queue one block and wait for its result; cancelling drops it if not started."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[TranscriptionResult] = loop.create_future()
        self._queue.put(
            (int(priority), next(self._seq), _Job(audio, kwargs, future, loop, time.perf_counter()))
        )
        return await future

    def close(self) -> None:
        """Stop the workers after the jobs already queued."""
        for _ in self._threads:
            self._queue.put((int(Priority.BATCH) + 1, next(self._seq), None))

    def _work(self) -> None:
        while True:
            _, _, job = self._queue.get()
            if job is None:
                return
            if job.future.cancelled():
                continue
            with self._lock:
                self._busy += 1
            started = time.perf_counter()
            try:
                result = self.transcriber.transcribe(job.audio, **job.kwargs)
                if self.postprocess is not None:
                    result = self.postprocess(result)
            except Exception as exc:
                _LOGGER.exception("decode failed")
                job.loop.call_soon_threadsafe(_set_exception, job.future, exc)
            else:
                done = time.perf_counter()
                seconds = max(len(job.audio) / SAMPLE_RATE, 1e-3)
                self._rtf.append((done - started) / seconds)
                self._latency_s.append(done - job.queued_at)
                self.decodes += 1
                job.loop.call_soon_threadsafe(_set_result, job.future, result)
            finally:
                with self._lock:
                    self._busy -= 1


def _set_result(future: asyncio.Future[TranscriptionResult], result: TranscriptionResult) -> None:
    if not future.done():
        future.set_result(result)


def _set_exception(future: asyncio.Future[TranscriptionResult], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)
