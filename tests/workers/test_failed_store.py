"""The failed store settles every failure, whatever MySQL refuses, against the real MariaDB."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from gateway.shared.laravel.failed import FailedJob, TableFailedStore, refused_key
from gateway.shared.laravel.jobs import decode, encode, new_payload
from gateway.shared.laravel.queues import pending_key
from tests.mysql import own_database
from tests.workers.conftest import FAILED_JOBS_DDL, Harness, eventually
from workers.connections import mysql_pool

# An older table: no exception column.
NO_EXCEPTION_DDL = FAILED_JOBS_DDL.replace("  exception LONGTEXT NOT NULL,\n", "")
BIG = 17 * 1024 * 1024  # over MariaDB's default max_allowed_packet (16 MiB)


async def _with_table(h: Harness, *ddl: str) -> AsyncIterator[Harness]:
    async with own_database(*ddl) as (db, _):
        h.mysql_dsn = f"mysql://root@127.0.0.1:3306/{db}"
        yield h


async def _fail_three(h: Harness) -> None:
    """Three jobs that fail on their one try; each must run once and leave :reserved."""
    for _ in range(3):
        await h.push("q", "flaky", {"log": h.key("log")}, maxTries=1)
    async with h.pool(h.config(queues=("q",))):
        await eventually(lambda: h.redis.llen(refused_key(h.prefix)), lambda n: n == 3)
    assert len(await h.log()) == 3  # each ran once
    assert await h.redis.zcard(h.keys("q").reserved) == 0
    assert await h.redis.llen(h.keys("q").list) == 0


@pytest.mark.parametrize("ddl", [(), (NO_EXCEPTION_DDL,)], ids=["no table", "missing column"])
async def test_a_refused_failure_is_kept_in_redis_with_the_reason(
    harness: Harness, ddl: tuple[str, ...]
) -> None:
    async for h in _with_table(harness, *ddl):
        await _fail_three(h)
        kept = [json.loads(r) for r in await h.redis.lrange(refused_key(h.prefix), 0, -1)]
        assert all(e["refused"] for e in kept)
        assert all("flaky failure" in e["exception"] for e in kept)
        listed = h.run_cli("failed", "list")
        assert listed.returncode == 0, listed.stderr
        assert "refused by the database" in listed.stdout


async def _store(h: Harness) -> AsyncIterator[TableFailedStore]:
    mysql = await mysql_pool(h.mysql_dsn)
    assert mysql is not None
    try:
        yield TableFailedStore(h.redis, h.prefix, mysql, "redis", "UTC")
    finally:
        mysql.close()
        await mysql.wait_closed()


def _entry(payload: bytes, exception: str = "boom") -> FailedJob:
    job_id = str(decode(payload)["uuid"])
    return FailedJob(
        job_id, job_id, "redis", "q", payload.decode(), exception, "2026-01-01 00:00:00"
    )


async def test_oversized_rows_never_block_the_failures_behind_them(mysql_harness: Harness) -> None:
    h = mysql_harness
    huge_exception = _entry(encode(new_payload("flaky", {})), "x" * BIG)
    huge_payload = _entry(encode(new_payload("flaky", {"blob": "y" * BIG})))
    plain = _entry(encode(new_payload("flaky", {})))
    for entry in (huge_exception, huge_payload, plain):
        await h.redis.rpush(pending_key(h.prefix), entry.to_json())
    async for store in _store(h):
        assert await asyncio.wait_for(store.write_pending(), 30) == 2
        assert await store.count() == 3
    rows = {r["uuid"]: r for r in await h.mysql_rows()}
    assert set(rows) == {huge_exception.uuid, plain.uuid}
    assert "[cut by the worker pool" in rows[huge_exception.uuid]["exception"]
    assert len(rows[huge_exception.uuid]["exception"]) < BIG
    assert await h.redis.llen(pending_key(h.prefix)) == 0
    [kept] = await h.redis.lrange(refused_key(h.prefix), 0, -1)
    assert json.loads(kept)["uuid"] == huge_payload.uuid
    assert "max_allowed_packet" in json.loads(kept)["refused"]


async def test_a_refused_failure_can_be_retried_and_forgotten(harness: Harness) -> None:
    async for h in _with_table(harness):
        await _fail_three(h)
        kept = [json.loads(r) for r in await h.redis.lrange(refused_key(h.prefix), 0, -1)]
        async for store in _store(h):
            assert await store.retry(kept[0]["uuid"]) == [kept[0]["uuid"]]
            assert await store.forget(kept[1]["uuid"])
            assert await store.redis.llen(refused_key(h.prefix)) == 1
        [queued] = await h.redis.lrange(h.keys("q").list, 0, -1)
        assert decode(queued)["uuid"] == kept[0]["uuid"]


async def test_a_failed_payload_loses_its_pace_slot(mysql_harness: Harness) -> None:
    h = mysql_harness
    await h.push("q", "flaky", {"log": h.key("log")}, maxTries=1, paceSlot=123.0)
    async with h.pool(h.config(queues=("q",))):
        [row] = await eventually(h.failed)
    assert "paceSlot" not in decode(row["payload"])
    async for store in _store(h):
        await store._execute(
            "UPDATE failed_jobs SET payload = %s",
            (encode({**decode(row["payload"]), "paceSlot": 5.0}).decode(),),
        )
        assert await store.retry(row["uuid"]) == [row["uuid"]]
    [queued] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert "paceSlot" not in decode(queued) and decode(queued)["attempts"] == 0


async def test_two_concurrent_retries_push_one_copy(mysql_harness: Harness) -> None:
    h = mysql_harness
    payload = encode(new_payload("flaky", {}))
    entry = _entry(payload)
    async for store in _store(h):
        await store._execute(
            "INSERT INTO failed_jobs (uuid, connection, queue, payload, exception)"
            " VALUES (%s, 'redis', 'q', %s, 'x')",
            (entry.uuid, entry.payload),
        )
        for _ in range(2):
            others = TableFailedStore(h.redis, h.prefix, store.mysql, "redis", "UTC")
            results = await asyncio.gather(store.retry(entry.uuid), others.retry(entry.uuid))
            assert sorted(map(len, results)) == [0, 1]
            assert await h.redis.llen(h.keys("q").list) == 1
            assert await h.mysql_rows() == []
            await h.redis.delete(h.keys("q").list)
            await store._execute(
                "INSERT INTO failed_jobs (uuid, connection, queue, payload, exception)"
                " VALUES (%s, 'redis', 'q', %s, 'x')",
                (entry.uuid, entry.payload),
            )


@pytest.mark.parametrize("resend", [False, True], ids=["kept key", "resend"])
async def test_failed_retry_resend_gives_the_job_a_fresh_key(
    mysql_harness: Harness, resend: bool
) -> None:
    h = mysql_harness
    job = decode(await h.push("q", "flaky", {"log": h.key("log")}, maxTries=1))
    async with h.pool(h.config(queues=("q",))):
        await eventually(h.failed)
    flags = ["--resend"] if resend else []
    result = h.run_cli("failed", "retry", job["uuid"], *flags)
    assert result.returncode == 0, result.stderr
    [queued] = [decode(r) for r in await h.redis.lrange(h.keys("q").list, 0, -1)]
    assert await h.mysql_rows() == []
    if resend:
        assert queued["uuid"] != job["uuid"] and queued["id"] == queued["uuid"]
        assert queued["resentFrom"] == job["uuid"]
    else:
        assert queued["uuid"] == queued["id"] == job["uuid"] and "resentFrom" not in queued
    assert queued["data"] == job["data"] and queued["attempts"] == 0


class _HeldFlusher(TableFailedStore):
    """A flusher whose INSERT waits at the database's door until ``gate`` opens: the
    interleaving of a retry with a write in flight, made to happen every time."""

    def __init__(self, *args: object) -> None:
        super().__init__(*args)  # type: ignore[arg-type]
        self.reached, self.gate = asyncio.Event(), asyncio.Event()

    async def _write(self, sql: str, args: tuple[object, ...]) -> int:
        if sql.lstrip().upper().startswith("INSERT"):
            self.reached.set()
            await self.gate.wait()
        return await super()._write(sql, args)


@pytest.mark.parametrize("action", ["retry", "forget"])
async def test_a_retry_or_forget_while_the_flusher_writes_the_row_leaves_one_outcome(
    mysql_harness: Harness, action: str
) -> None:
    h = mysql_harness
    entry = _entry(encode(new_payload("flaky", {})))
    await h.redis.rpush(pending_key(h.prefix), entry.to_json())
    mysql = await mysql_pool(h.mysql_dsn)
    assert mysql is not None
    try:
        flusher = _HeldFlusher(h.redis, h.prefix, mysql, "redis", "UTC")
        flushing = asyncio.create_task(flusher.write_pending())
        await asyncio.wait_for(flusher.reached.wait(), 10)  # its row is about to be written
        async for other in _store(h):
            if action == "retry":
                assert await other.retry(entry.uuid) == [entry.uuid]
            else:
                assert await other.forget(entry.uuid)
        flusher.gate.set()  # the row goes in after the retry took the entry
        await asyncio.wait_for(flushing, 10)
    finally:
        mysql.close()
        await mysql.wait_closed()
    assert await h.mysql_rows() == []  # no row outlives the entry the retry took
    assert await h.redis.llen(pending_key(h.prefix)) == 0
    assert await h.redis.llen(h.keys("q").list) == (1 if action == "retry" else 0)
