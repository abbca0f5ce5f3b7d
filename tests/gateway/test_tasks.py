"""Stopping background tasks: each ends, even when a library loses a cancellation."""

from __future__ import annotations

import asyncio
import logging

import pytest
import redis.asyncio as aioredis

from gateway.shared.tasks import cancel_and_wait
from tests.harness import REDIS_URL


async def test_a_task_busy_with_redis_always_ends_when_cancelled(redis_prefix: str) -> None:
    """The pin store's client has a socket timeout, so redis-py sends through wait_for,
    which on Python 3.11 drops a cancellation that lands as a command's write ends."""
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=1.0, socket_connect_timeout=1.0)

    async def busy() -> None:
        while True:
            await client.get(f"{redis_prefix}x")

    try:
        for turns in [n % 20 for n in range(60)]:  # cancelled at every point of a call
            task = asyncio.create_task(busy())
            for _ in range(turns):
                await asyncio.sleep(0)
            stopping = asyncio.create_task(cancel_and_wait([task]))
            await asyncio.wait([stopping], timeout=5)
            assert task.cancelled(), f"still running after a cancel {turns} loop turns in"
    finally:
        await client.aclose()


async def test_a_task_that_will_not_end_is_left_behind_after_the_limit(
    caplog: pytest.LogCaptureFixture,
) -> None:
    stop = asyncio.Event()

    async def stubborn() -> None:
        while not stop.is_set():
            try:
                await stop.wait()
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, "gateway.shared.tasks"):
        async with asyncio.timeout(5):
            await cancel_and_wait([task, None], limit=0.3)
    assert not task.done()
    assert "1 tasks did not stop when cancelled" in caplog.text
    stop.set()
    await task
