"""``python -m workers enqueue | stats | failed ...`` as real processes."""

from __future__ import annotations

import asyncio
import json

import aiomysql

from gateway.shared.laravel.failed import failed_store
from tests.workers.conftest import MYSQL, Harness, eventually


async def test_enqueue_then_stats(harness: Harness) -> None:
    now = harness.run_cli("enqueue", "q", "record", "--data", '{"n": 1, "url": "a/b"}')
    later = harness.run_cli("enqueue", "q", "record", "--data", "{}", "--delay", "60")
    assert now.returncode == later.returncode == 0, now.stderr + later.stderr

    keys = harness.keys("q")
    [raw] = await harness.redis.lrange(keys.list, 0, -1)
    assert b'"url":"a\\/b"' in raw  # encoded as Laravel does
    payload = json.loads(raw)
    assert payload["uuid"] == now.stdout.strip()
    assert (payload["job"], payload["data"], payload["attempts"]) == (
        "record",
        {"n": 1, "url": "a/b"},
        0,
    )
    # one element per push, and one for the delayed job so an idle pool learns its due time
    assert await harness.redis.llen(keys.notify) == 2
    assert await harness.redis.zcard(keys.delayed) == 1

    stats = harness.run_cli("--queue", "q,other", "stats")
    assert stats.returncode == 0, stats.stderr
    lines = stats.stdout.splitlines()
    assert lines[1].split()[:4] == ["q", "1", "1", "0"]
    assert lines[1].split()[4].endswith("s")  # age known from pushedAt
    assert lines[2].split() == ["other", "0", "0", "0", "-"]
    assert lines[3] == "failed: 0"


def test_bad_flags_and_settings_exit_2_with_one_line(harness: Harness) -> None:
    for args in (
        ["--concurrency", "many"],
        ["--timeout", "100", "--retry-after", "50"],
        ["--handler", "x=no.such.module:fn", "--metrics-port", "0"],
        ["--handler", "nonsense"],
        ["failed", "retry"],
        ["enqueue", "q", "x", "--data", "[1]"],
    ):
        result = harness.run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert len(result.stderr.strip().splitlines()) == 1, (args, result.stderr)
        assert result.stderr.startswith("workers: ")


async def test_failed_commands_work_on_failed_jobs_when_there_is_a_database(
    mysql_harness: Harness,
) -> None:
    h = mysql_harness
    ids = [json.loads(await h.push("q", "no.such.job", {"n": n}))["uuid"] for n in range(3)]
    async with h.pool(h.config(queues=("q",))):
        await eventually(h.failed, lambda e: len(e) == 3, what="three failures")
    assert await h.redis.llen(h.failed_key) == 0  # the table is the only store
    async with await h.mysql_conn() as conn, conn.cursor() as cur:  # failures PHP recorded
        await cur.execute(
            "INSERT INTO failed_jobs (uuid, connection, queue, payload, exception) VALUES"
            " ('php-1', 'redis', 'q', '{\"job\":\"x\",\"attempts\":2}', 'E: php'),"
            " ('sqs-1', 'sqs', 'q', '{}', 'E: sqs')"
        )

    listed = h.run_cli("failed", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed[:2]] == ["sqs-1", "php-1"]  # newest first
    assert sorted(line.split()[0] for line in listed[2:]) == sorted(ids)
    assert "UnknownJob" in listed[-1]
    assert "failed: 5" in h.run_cli("--queue", "q", "stats").stdout

    shown = h.run_cli("failed", "show", ids[0])
    assert json.loads(shown.stdout)["id"] == ids[0]
    assert h.run_cli("failed", "show", "nope").returncode == 1

    assert h.run_cli("failed", "retry", "php-1").stdout.strip() == "retried php-1"
    [raw] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert json.loads(raw) == {"job": "x", "attempts": 0}
    assert await h.redis.llen(h.keys("q").notify) == 1
    again = h.run_cli("failed", "retry", "php-1")
    assert again.returncode == 1 and "no failed job php-1" in again.stderr
    other = h.run_cli("failed", "retry", "sqs-1")
    assert other.returncode == 1 and "queue:retry" in other.stderr

    assert h.run_cli("failed", "forget", ids[1]).returncode == 0
    assert h.run_cli("failed", "forget", ids[1]).returncode == 1
    assert {r["uuid"] for r in await h.mysql_rows()} == {ids[0], ids[2], "sqs-1"}

    assert h.run_cli("failed", "flush").stdout.strip() == "flushed 3"  # as queue:flush
    assert await h.mysql_rows() == []


async def test_concurrent_retries_of_one_row_push_the_job_once(mysql_harness: Harness) -> None:
    h = mysql_harness
    await h.push("q", "no.such.job", {})
    async with h.pool(h.config(queues=("q",))):
        [entry] = await eventually(h.failed, what="failure")
    db = h.mysql_dsn.rsplit("/", 1)[1]
    mysql = await aiomysql.create_pool(**MYSQL, db=db, autocommit=True, maxsize=4)
    try:
        stores = [failed_store(h.redis, h.prefix, mysql) for _ in range(4)]
        results = await asyncio.gather(*(store.retry(entry["id"]) for store in stores))
    finally:
        mysql.close()
        await mysql.wait_closed()
    assert sorted(results) == [[], [], [], [entry["id"]]]
    assert await h.redis.llen(h.keys("q").list) == 1


async def test_failed_commands_without_a_database_use_the_redis_list(harness: Harness) -> None:
    ids = [json.loads(await harness.push("q", "no.such.job", {"n": n}))["uuid"] for n in range(2)]
    async with harness.pool(harness.config(queues=("q",))):
        await eventually(harness.failed, lambda e: len(e) == 2, what="two failures")
    listed = harness.run_cli("failed", "list").stdout
    assert sorted(line.split()[0] for line in listed.splitlines()) == sorted(ids)
    assert json.loads(harness.run_cli("failed", "show", ids[0]).stdout)["id"] == ids[0]
    assert harness.run_cli("failed", "forget", ids[0]).stdout.strip() == f"forgot {ids[0]}"
    assert harness.run_cli("failed", "flush").stdout.strip() == "flushed 1"
    assert await harness.failed() == []


async def test_failed_retry_all(harness: Harness) -> None:
    for n in range(2):
        await harness.push("a" if n else "b", "no.such.job", {"n": n})
    async with harness.pool(harness.config(queues=("a", "b"))):
        await eventually(harness.failed, lambda e: len(e) == 2, what="two failures")
    result = harness.run_cli("failed", "retry", "--all")
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 2
    assert await harness.failed() == []
    assert await harness.redis.llen(harness.keys("a").list) == 1
    assert await harness.redis.llen(harness.keys("b").list) == 1


async def test_failed_retry_skips_a_row_php_took_meanwhile_and_says_so(
    mysql_harness: Harness,
) -> None:
    """``retry --all`` lists two rows; while it waits for the first one's lock, PHP's
    ``queue:retry`` takes that row (deletes it). The job is not pushed a second time."""
    h = mysql_harness
    ids = [json.loads(await h.push("q", "no.such.job", {"n": n}))["uuid"] for n in range(2)]
    async with h.pool(h.config(queues=("q",))):
        await eventually(h.mysql_rows, lambda rows: len(rows) == 2, what="two failures")
    db = h.mysql_dsn.rsplit("/", 1)[1]
    php = await aiomysql.connect(**MYSQL, db=db)
    try:
        async with php.cursor() as cur:
            await cur.execute("SELECT id FROM failed_jobs WHERE uuid = %s FOR UPDATE", (ids[0],))
            retry = asyncio.create_task(asyncio.to_thread(h.run_cli, "failed", "retry", "--all"))

            async def waiting_for_the_row() -> bool:
                assert not retry.done(), retry.result()  # it must not get past the row
                async with await h.mysql_conn() as conn, conn.cursor() as look:
                    await look.execute(
                        "SELECT COUNT(*) FROM information_schema.PROCESSLIST"
                        " WHERE DB = %s AND INFO LIKE %s AND ID <> CONNECTION_ID()",
                        (db, "DELETE FROM failed_jobs%"),
                    )
                    return (await look.fetchone())[0] > 0

            # a process of its own: under load it may take a while to get there
            await eventually(waiting_for_the_row, timeout=25, what="the retry waiting for the row")
            await cur.execute("DELETE FROM failed_jobs WHERE uuid = %s", (ids[0],))
        await php.commit()
        result = await retry
    finally:
        php.close()
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"retried {ids[1]}",
        f"skipped {ids[0]}: no longer in the failed store (retried or forgotten meanwhile,"
        " e.g. by PHP)",
    ]
    [pushed] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert json.loads(pushed)["uuid"] == ids[1]
