"""Background tasks stop when told to, even where Python 3.11 swallows a cancellation.

The hang these guard against: a shutdown that cancels a ``while True`` refresh loop
and awaits it, while the loop's ``asyncio.wait_for`` swallowed the cancellation
because the awaited Redis reply arrived in the same loop step (CPython gh-86296).
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from voicemesh.tasks import stop_task, within

pytestmark = pytest.mark.unit


async def _cancelled_as_it_completes(wrapper) -> str:
    """Run ``wrapper(future)`` in a task; resolve the future and cancel the task together."""
    future: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def worker() -> str:
        await wrapper(future)
        return "ran on"

    task = asyncio.create_task(worker())
    await asyncio.sleep(0)  # the worker now waits on the future
    future.set_result("reply")
    task.cancel()
    try:
        return await task
    except asyncio.CancelledError:
        return "cancelled"


async def test_within_keeps_a_cancellation_that_lands_as_the_operation_completes() -> None:
    assert await _cancelled_as_it_completes(lambda f: within(10, f)) == "cancelled"


async def test_within_raises_timeout_error_after_the_bound() -> None:
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    with pytest.raises(TimeoutError):
        await within(0.05, never)
    assert never.cancelled()


async def test_within_returns_the_result() -> None:
    async def answer() -> int:
        return 42

    assert await within(1, answer()) == 42


async def test_stop_task_cancels_again_a_task_that_swallowed_the_first_cancel() -> None:
    swallowed = 0

    async def stubborn() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                swallowed += 1
                if swallowed == 1:
                    continue  # what wait_for's race does to a refresh loop
                raise

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    assert await stop_task(task, timeout_s=30)
    assert task.cancelled()
    assert swallowed == 2


async def test_stop_task_gives_up_with_a_warning_instead_of_hanging(
    caplog: pytest.LogCaptureFixture,
) -> None:
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf-task")
    await asyncio.sleep(0)
    with caplog.at_level(logging.WARNING, logger="voicemesh.tasks"):
        assert not await stop_task(task, timeout_s=0.2)
    assert "deaf-task did not stop" in caplog.text
    release.set()
    task.cancel()
    await asyncio.wait({task}, timeout=30)
    assert task.done()


async def test_stop_task_accepts_none_and_finished_tasks() -> None:
    async def done() -> None:
        return None

    task = asyncio.create_task(done())
    await task
    assert await stop_task(task)
    assert await stop_task(None)
