"""Redis or MySQL away while jobs finish: nothing is lost, nothing runs twice.

Redis away: outcomes wait in memory and nothing new is taken. MySQL away: failures wait in
Redis and the pool goes on.

The pool under test reaches its store through a relay the test cuts and restores; a second
pool, connected directly, keeps taking jobs meanwhile, and would run again any job whose
reservation ran out during the cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import subprocess
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable
from dataclasses import replace
from urllib.parse import urlsplit

import pytest

from gateway.shared.laravel.failed import INSERT, FailedJob, failed_store
from gateway.shared.laravel.queues import Queues, pending_key
from tests.relay import Relay
from tests.workers.conftest import REDIS_URL, Harness, eventually
from workers.connections import mysql_pool, redis_client
from workers.handlers import JobContext
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


@contextlib.asynccontextmanager
async def mysql_through(h: Harness) -> AsyncIterator[Relay]:
    """The harness' MySQL DSN points at a relay while inside."""
    dsn = urlsplit(h.mysql_dsn)
    direct = h.mysql_dsn
    async with Relay(dsn.hostname or "127.0.0.1", dsn.port or 3306) as relay:
        h.mysql_dsn = direct.replace(f":{dsn.port}/", f":{relay.port}/")
        try:
            yield relay
        finally:
            h.mysql_dsn = direct


async def test_a_failure_during_a_mysql_cut_waits_in_redis_and_the_pool_goes_on(
    mysql_harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    h = mysql_harness
    caplog.set_level(logging.INFO, logger="workers")
    runs: Counter[int] = Counter()
    async with mysql_through(h) as relay:
        relay.cut()
        failing = await h.push("q", "no.such.job", {"n": 0})
        for n in range(1, 6):
            await h.push("q", "work", {"n": n, "seconds": 0.05})
        async with h.pool(h.config(queues=("q",), concurrency=2)) as pool:
            register([pool], runs)
            await eventually(lambda: len(runs), lambda c: c == 5, what="the others, during the cut")
            await eventually(
                lambda: h.redis.llen(pending_key(h.prefix)), what="the failure in Redis"
            )
            await eventually(lambda: pool.metrics.waiting_for_database._value.get() == 1)
            assert pool.unsettled == 0
            assert await h.redis.zcard(h.keys("q").reserved) == 0
            assert await h.mysql_rows() == []
            relay.restore()
            await eventually(h.mysql_rows, what="the row, once MySQL answers")
            await eventually(lambda: pool.metrics.waiting_for_database._value.get() == 0)
    [row] = await h.mysql_rows()  # written once
    pushed = json.loads(failing)
    assert (row["uuid"], row["payload"], row["queue"], row["connection"]) == (
        pushed["uuid"],
        failing.decode(),
        "q",
        "redis",
    )
    assert row["exception"].startswith("UnknownJob") and row["failed_at"] is not None
    assert await h.redis.llen(pending_key(h.prefix)) == 0
    assert runs == Counter(dict.fromkeys(range(1, 6), 1))
    logs = [r.getMessage() for r in store_logs(caplog)]
    [warning] = [m for m in logs if "unreachable" in m]  # one line for the outage
    assert warning.startswith("MySQL unreachable") and "jobs keep running" in warning
    assert any(m.startswith("MySQL answers again") for m in logs)


async def test_a_pool_killed_during_a_mysql_cut_loses_no_failure(mysql_harness: Harness) -> None:
    h = mysql_harness
    async with mysql_through(h) as relay:
        relay.cut()
        failing = await h.push("q", "no.such.job", {"n": 0})
        job_id = json.loads(failing)["uuid"]
        worker = h.spawn("--queue", "q", "--metrics-port", "0")
        await eventually(lambda: h.redis.llen(pending_key(h.prefix)), what="the failure in Redis")
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    assert await h.redis.zcard(h.keys("q").reserved) == 0

    listed = h.run_cli("failed", "list").stdout
    assert job_id in listed and "(waiting for the database)" in listed
    assert "failed: 1 (1 waiting for the database)" in h.run_cli("--queue", "q", "stats").stdout
    # as if a flusher had died between writing the row and taking the entry out of Redis
    async with await h.mysql_conn() as conn, conn.cursor() as cur:
        [raw] = await h.redis.lrange(pending_key(h.prefix), 0, -1)
        await cur.execute(INSERT, FailedJob.from_json(raw).row)

    async with h.pool(h.config(queues=("q",))):
        await eventually(lambda: h.redis.llen(pending_key(h.prefix)), _zero, what="flushed")
    [row] = await h.mysql_rows()
    assert (row["uuid"], row["payload"]) == (job_id, failing.decode())
    assert "(waiting" not in h.run_cli("failed", "list").stdout


async def test_failures_waiting_for_mysql_are_listed_retried_and_forgotten_while_it_is_away(
    mysql_harness: Harness,
) -> None:
    h = mysql_harness
    ids = [json.loads(await h.push("q", "no.such.job", {"n": n}))["uuid"] for n in range(3)]
    retry_id, forget_id, flush_id = ids

    def cli(*args: str) -> Awaitable[subprocess.CompletedProcess[str]]:
        return asyncio.to_thread(h.run_cli, "--queue", "q", *args)  # the relay runs in this loop

    async with mysql_through(h) as relay:
        relay.reset()
        async with h.pool(h.config(queues=("q",))):
            await eventually(lambda: h.redis.llen(pending_key(h.prefix)), _three, what="waiting")
        listed = await cli("failed", "list")
        assert listed.stdout.count("(waiting for the database)") == 3
        assert all(f"{job_id}  " in listed.stdout for job_id in ids)
        assert "the database does not answer" in listed.stderr
        stats = (await cli("stats")).stdout
        assert "failed: unknown, the database does not answer (3 waiting for it)" in stats
        retried = await cli("failed", "retry", retry_id)
        assert retried.stdout.strip() == f"retried {retry_id}", retried.stderr
        assert (await cli("failed", "forget", forget_id)).stdout.strip() == f"forgot {forget_id}"

    [again] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert json.loads(again)["uuid"] == retry_id and json.loads(again)["attempts"] == 0
    assert flush_id in (await cli("failed", "show", flush_id)).stdout
    assert (await cli("failed", "flush")).stdout.strip() == "flushed 1"
    assert await h.redis.llen(pending_key(h.prefix)) == 0
    assert await h.mysql_rows() == []


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


def _three(n: int) -> bool:
    return n == 3
