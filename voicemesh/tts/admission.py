"""Bounded concurrency of a TTS replica: a few syntheses run, a bounded queue waits."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from voicemesh.errors import Busy
from voicemesh.tasks import within


class Admission:
    """Bounded concurrency: ``limit`` requests run, ``max_queue`` wait up to a timeout."""

    def __init__(self, limit: int, max_queue: int, timeout_s: float) -> None:
        self._semaphore = asyncio.Semaphore(limit)
        self.max_queue = max_queue
        self.timeout_s = timeout_s
        self.waiting = 0
        self.active = 0

    async def acquire(self) -> None:
        """Take a slot, or raise :class:`Busy` when the queue is full or too slow."""
        if self.waiting >= self.max_queue and self._semaphore.locked():
            raise Busy(
                f"this replica is busy ({self.active} running, {self.waiting} waiting); "
                "try again or another replica"
            )
        self.waiting += 1
        try:
            await within(self.timeout_s, self._semaphore.acquire())
        except TimeoutError as exc:
            raise Busy(
                f"no synthesis slot within {self.timeout_s:g} s ({self.active} running, "
                f"{self.waiting - 1} waiting); try again or another replica",
            ) from exc
        finally:
            self.waiting -= 1
        self.active += 1

    def release(self) -> None:
        """Give the slot back."""
        self.active -= 1
        self._semaphore.release()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        """``async with admission.slot():`` around one synthesis."""
        await self.acquire()
        try:
            yield
        finally:
            self.release()
