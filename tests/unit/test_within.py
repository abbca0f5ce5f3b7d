"""``within``: a deadline that holds even when the awaited call loses its cancellation."""

from __future__ import annotations

import asyncio

import pytest

from gateway.shared.tasks import within


async def test_a_call_that_swallows_its_cancellation_times_out_and_hands_its_result_late():
    release = asyncio.Event()
    late: list[str] = []

    async def stubborn() -> str:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:  # what a library losing a cancellation does
            await release.wait()
        return "connection"

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(within(stubborn(), 0.05, late=late.append), 5)
    assert late == []
    release.set()
    for _ in range(100):
        if late:
            break
        await asyncio.sleep(0.01)
    assert late == ["connection"]  # e.g. closed by its owner, never leaked


async def test_a_call_in_time_gives_its_result_and_a_failure_its_error():
    async def quick() -> int:
        return 7

    async def broken() -> int:
        raise ValueError("no")

    assert await within(quick(), 1) == 7
    with pytest.raises(ValueError):
        await within(broken(), 1)


async def test_a_caller_cancelled_while_waiting_cancels_the_call():
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def slow() -> None:
        started.set()
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    waiter = asyncio.ensure_future(within(slow(), 30))
    await started.wait()
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    await asyncio.wait_for(cancelled.wait(), 1)
