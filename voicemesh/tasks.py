"""Background tasks that stop when told to (shared by every service).

Python 3.11's ``asyncio.wait_for`` returns its result instead of raising when a
cancellation lands in the same loop step as the awaited operation completes
(CPython gh-86296, fixed in 3.12). A ``while True`` loop built on it then runs on
after ``task.cancel()``, and a shutdown that awaits the task hangs for good; a
loaded machine makes that race likely enough to hit. Two defences live here:
:func:`within` bounds an operation with ``asyncio.timeout``, which keeps an outside
cancellation, and :func:`stop_task` cancels until the task ends and gives up with
a warning after a bound rather than hang.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import TypeVar

_LOGGER = logging.getLogger(__name__)

_T = TypeVar("_T")

STOP_TIMEOUT_S = 5.0
"""How long :func:`stop_task` waits for a cancelled task by default."""

_RECANCEL_S = 0.5


async def within(timeout_s: float, operation: Awaitable[_T]) -> _T:
    """Await ``operation``, raising ``TimeoutError`` after ``timeout_s`` seconds.

    Unlike 3.11's ``asyncio.wait_for``, a cancellation of the caller always
    propagates, even when it arrives as the operation completes.
    """
    async with asyncio.timeout(timeout_s):
        return await operation


async def stop_task(task: asyncio.Task[object] | None, timeout_s: float = STOP_TIMEOUT_S) -> bool:
    """Cancel ``task`` and wait until it has ended; True when it did within ``timeout_s``.

    A task that swallowed a cancellation is cancelled again every half second.
    One that still runs after ``timeout_s`` is left running with a warning: a
    shutdown that hangs forever is worse than one that leaks a task. An exception
    the task ended with is logged, not raised.
    """
    if task is None:
        return True
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not task.done():
        left = deadline - loop.time()
        if left <= 0:
            _LOGGER.warning(
                "task %s did not stop within %.1f s of being cancelled", task.get_name(), timeout_s
            )
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(_RECANCEL_S, left))
    if not task.cancelled() and task.exception() is not None:
        _LOGGER.warning("task %s had failed: %r", task.get_name(), task.exception())
    return True
