"""Handlers the tests register (by dotted path, so worker subprocesses load them too).

Each records what happened in Redis keys named in the job's data, so a test can observe
a worker in another process.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

from workers.handlers import JobContext


async def record(job: JobContext) -> None:
    """Append {n, queue, attempt, t, pid} to the list ``data.log``."""
    entry = {
        "n": job.data.get("n"),
        "queue": job.queue,
        "attempt": job.attempt,
        "session": job.data.get("session_id"),
        "t": time.time(),
        "pid": os.getpid(),
    }
    await job.redis.rpush(job.data["log"], json.dumps(entry))


async def work(job: JobContext) -> None:
    """Mark ``n`` started, run ``data.seconds``, then mark it done and count the run."""
    n = job.data["n"]
    await job.redis.sadd(job.data["started"], n)
    await asyncio.sleep(job.data.get("seconds", 0))
    await job.redis.hincrby(job.data["runs"], n, 1)
    await job.redis.sadd(job.data["done"], n)


async def flaky(job: JobContext) -> None:
    """Fail until attempt ``data.succeed_on`` (never, if absent); log every attempt."""
    await record(job)
    if job.attempt < job.data.get("succeed_on", 1_000_000):
        raise RuntimeError(f"flaky failure on attempt {job.attempt}")


async def hang(job: JobContext) -> None:
    """Never finish (until cancelled by the timeout)."""
    await record(job)
    await asyncio.Event().wait()


async def gated(job: JobContext) -> None:
    """Fail while the key ``data.gate`` exists; log every attempt."""
    await record(job)
    if await job.redis.exists(job.data["gate"]):
        raise RuntimeError("the gate is closed")
