"""Background tasks of a gateway process: periodic jobs and a clean shutdown of them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any


async def every(interval: float, job: Callable[[], Awaitable[Any]]) -> None:
    """Run ``job`` every ``interval`` seconds, after a first wait, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await job()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel tasks and wait until each has ended, so nothing runs after shutdown."""
    pending = [t for t in tasks if t is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task
