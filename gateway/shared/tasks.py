"""Background tasks of a gateway process: periodic jobs and a clean shutdown of them."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("gateway.shared.tasks")

RECANCEL = 0.1  # seconds a cancelled task gets to end before it is cancelled again
STOP_LIMIT = 10.0  # seconds before shutdown goes on without a task that will not end


async def every(interval: float, job: Callable[[], Awaitable[Any]]) -> None:
    """Run ``job`` every ``interval`` seconds, after a first wait, until cancelled."""
    while True:
        await asyncio.sleep(interval)
        await job()


async def paced(parts: Iterable[T]) -> AsyncIterator[T]:
    """Each of ``parts``, letting the event loop run between two: long pure work in slices
    (e.g. a decision over a million pins) keeps the requests flowing meanwhile."""
    for part in parts:
        yield part
        await asyncio.sleep(0)


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[Any] | None], limit: float = STOP_LIMIT
) -> None:
    """Cancel tasks and wait until each has ended, so nothing runs after shutdown.

    A cancellation can be lost inside a library: on Python 3.11, ``asyncio.wait_for``
    (through which redis-py sends every command of a client with a socket timeout) returns
    the result instead of raising when the call ended in the same loop turn. The task then
    goes on, and a single cancel-then-await would wait for it forever. So a task still
    running is cancelled again, and one still running after ``limit`` seconds is logged and
    left behind rather than holding up the shutdown. A task's own failure is not raised
    here, so one broken task cannot stop a shutdown half-way (asyncio logs it, unless its
    owner reads it).
    """
    pending = {t for t in tasks if t is not None}
    deadline = asyncio.get_running_loop().time() + limit
    while pending:
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            log.error("%d tasks did not stop when cancelled: %r", len(pending), pending)
            return
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(RECANCEL, left))


async def within(
    call: Awaitable[T], timeout: float, *, late: Callable[[T], object] | None = None
) -> T:
    """``call``'s result, or ``TimeoutError`` after ``timeout`` seconds even when the call
    loses its cancellation (see :func:`cancel_and_wait`): aiomysql connects through
    ``asyncio.wait_for``, and a cancel lost there leaves a plain ``asyncio.timeout`` waiting
    for a handshake that may never come. The call runs as its own task, left behind
    cancelled at the deadline; ``late`` gets a result it still makes (e.g. a connection to
    close), so nothing it opens is leaked."""
    task = asyncio.ensure_future(call)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except BaseException:
        done = set()
        raise
    finally:
        if not done:
            task.cancel()
            task.add_done_callback(lambda t: _hand_late(t, late))
    if task not in done:
        raise TimeoutError
    return task.result()


def _hand_late(task: asyncio.Future[T], late: Callable[[T], object] | None) -> None:
    if task.cancelled() or task.exception() is not None:
        return
    if late is not None:
        late(task.result())
