"""Redis or MySQL away while jobs finish: their outcomes wait in memory, nothing runs twice.

The pool under test reaches its store through a relay the test cuts and restores; a second
pool, connected directly, keeps taking jobs meanwhile, and would run again any job whose
reservation ran out during the cut.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import Counter
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from tests.relay import Relay
from tests.workers.conftest import REDIS_URL, Harness, eventually
from workers.connections import mysql_pool, redis_client
from workers.failed import failed_store
from workers.handlers import JobContext
from workers.queues import Queues
from workers.worker import Pool


def register(pools: list[Pool], runs: Counter[int]) -> None:
    """Handler ``work``: sleeps ``data.seconds``, counts the run, fails when asked to."""

    async def work(job: JobContext) -> None:
        await asyncio.sleep(job.data["seconds"])
        runs[job.data["n"]] += 1
        if job.attempt <= job.data.get("fail_times", 0):
            raise RuntimeError(f"failing attempt {job.attempt}")

    for pool in pools:
        pool.handlers["work"] = work


async def sleep_until(moment: float) -> None:
    """The scenario's clock (not synchronisation): wait until ``moment`` (monotonic)."""
    await asyncio.sleep(max(0.0, moment - time.monotonic()))


def store_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "workers" and r.levelno >= logging.INFO]


async def test_jobs_that_finish_during_a_redis_cut_are_settled_once_and_never_run_again(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="workers")
    runs: Counter[int] = Counter()
    for n in range(10):
        # 0-7 succeed, 8 fails once and is retried, 9 fails for good: done, retried, failed
        fail_times = {8: 1, 9: 5}.get(n, 0)
        await harness.push(
            "q",
            "work",
            {"n": n, "seconds": 2.5, "fail_times": fail_times},
            maxTries=3 if n == 8 else 1,
            backoff=0,
        )
    for n in range(10, 20):  # pushed before the cut, run by whoever takes them
        await harness.push("q", "work", {"n": n, "seconds": 0.05})
    # retry_after 3 s: un-extended, the first ten reservations would run out 3 s after the
    # take, in the middle of the cut (from 2 s to 3.5 s after it)
    config = harness.config(queues=("q",), concurrency=10, retry_after=3.0)
    host, port = urlsplit(REDIS_URL).hostname, urlsplit(REDIS_URL).port
    async with Relay(host or "127.0.0.1", port or 6379) as relay:
        cut_off = redis_client(f"redis://127.0.0.1:{relay.port}/0")
        try:
            async with harness.pool(config, cut_off) as pool:
                register([pool], runs)
                await eventually(lambda: pool.metrics.in_flight._value.get() == 10, what="10")
                taken = time.monotonic()
                await sleep_until(taken + 2.0)
                relay.reset()
                async with harness.pool(replace(config, concurrency=4)) as direct:
                    register([direct], runs)
                    await eventually(lambda: pool.unsettled == 10, what="outcomes kept")
                    assert len(runs) == 20  # the direct pool took the rest meanwhile
                    await sleep_until(taken + 3.5)
                    relay.restore()
                    await eventually(lambda: pool.unsettled == 0, what="outcomes written")
                    await eventually(lambda: runs[8] == 2, what="the retry of 8")
                    keys = harness.keys("q")
                    await eventually(
                        lambda: harness.redis.zcard(keys.reserved), _zero, what="all settled"
                    )
        finally:
            await cut_off.aclose()

    assert runs == Counter({**dict.fromkeys(range(20), 1), 8: 2})  # nothing ran twice
    [failed] = await harness.failed()
    assert json.loads(failed["payload"])["data"]["n"] == 9
    assert await harness.redis.zcard(harness.keys("q").delayed) == 0
    logs = store_logs(caplog)
    [outage] = [r.getMessage() for r in logs if "unreachable" in r.getMessage()]  # one line
    assert outage.startswith("Redis unreachable")
    assert any(r.getMessage().startswith("Redis answers again") for r in logs)
    assert not any(r.exc_info for r in caplog.records if r.name.startswith("workers"))


async def test_a_failure_recorded_while_mysql_is_away_is_written_when_it_answers(
    mysql_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = mysql_harness
    caplog.set_level(logging.INFO, logger="workers")
    dsn = urlsplit(h.mysql_dsn)
    async with Relay(dsn.hostname or "127.0.0.1", dsn.port or 3306) as relay:
        h.mysql_dsn = h.mysql_dsn.replace(f":{dsn.port}/", f":{relay.port}/")
        relay.reset()
        payload = await h.push("q", "no.such.job", {"n": 1})
        async with h.pool(h.config(queues=("q",))) as pool:
            await eventually(lambda: pool.unsettled == 1, what="the failure kept")
            assert await h.redis.zcard(h.keys("q").reserved) == 1  # still held, not lost
            relay.restore()
            await eventually(lambda: pool.unsettled == 0, what="the failure written")
        h.mysql_dsn = h.mysql_dsn.replace(f":{relay.port}/", f":{dsn.port}/")
    [row] = await h.mysql_rows()
    assert row["uuid"] == json.loads(payload)["uuid"]
    assert await h.redis.zcard(h.keys("q").reserved) == 0
    warnings = [r.getMessage() for r in store_logs(caplog) if "unreachable" in r.getMessage()]
    assert len(warnings) == 1 and warnings[0].startswith("MySQL unreachable")


async def test_a_failure_written_again_after_a_lost_answer_keeps_its_row(
    mysql_harness: Harness,
) -> None:
    """The first write got through but its answer was lost: the reservation is gone. Written
    again it keeps the row; written for the first time, a gone reservation means the job
    was taken back, and the row is withdrawn."""
    h = mysql_harness
    mysql = await mysql_pool(h.mysql_dsn)
    assert mysql is not None
    try:
        store = failed_store(h.redis, h.prefix, mysql)
        queues = Queues(h.redis, h.prefix, ["q"])
        for n in (1, 2):
            await h.push("q", "work", {"n": n})
        first, second = (await queues.reserve(2, retry_after=90)).jobs
        await h.redis.zrem(h.keys("q").reserved, first.raw, second.raw)

        await store.record(first, "boom", again=True)
        await store.record(second, "boom")

        assert [json.loads(r["payload"])["data"]["n"] for r in await h.mysql_rows()] == [1]
    finally:
        mysql.close()
        await mysql.wait_closed()


def _zero(n: int) -> bool:
    return n == 0
