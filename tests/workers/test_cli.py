"""``python -m workers enqueue | stats | failed ...`` as real processes."""

from __future__ import annotations

import asyncio
import json

import aiomysql

from gateway.shared.failures import headline
from gateway.shared.laravel.failed import RedisFailedStore, failed_store
from gateway.shared.laravel.jobs import Job, encode, new_payload
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


def test_each_failed_subcommand_lists_only_its_own_flags(harness: Harness) -> None:
    pool_flags = ("--concurrency", "--tries", "--backoff", "--metrics-port", "--handler")
    for action, own in (
        ("list", ("--queue", "--limit", "--json")),
        ("show", ("--json",)),
        ("retry", ("--queue", "--all", "--resend", "--json")),
        ("forget", ("--json",)),
        ("flush", ("--json",)),
    ):
        shown = harness.run_cli("failed", action, "--help")
        assert shown.returncode == 0, shown.stderr
        assert all(flag in shown.stdout for flag in own), (action, shown.stdout)
        assert not any(flag in shown.stdout for flag in pool_flags), (action, shown.stdout)
        assert ":class:" not in shown.stdout and "``" not in shown.stdout


async def _failures(h: Harness, queues: list[str], exception: str) -> list[str]:
    """Failed jobs recorded as the pool records them (newest last); their ids."""
    store = RedisFailedStore(h.redis, h.prefix, "redis", "UTC")
    ids = []
    for n, queue in enumerate(queues):
        payload = new_payload("whatsapp.send_message", {"n": n})
        raw = encode(payload)
        await h.redis.zadd(h.keys(queue).reserved, {raw: 0})
        await store.record(Job.reserved(queue, raw, True, raw), exception)
        ids.append(payload["uuid"])
    return ids


async def test_failed_list_filters_limits_and_speaks_json(harness: Harness) -> None:
    h = harness
    empty = h.run_cli("failed", "list")
    assert empty.returncode == 0
    assert empty.stdout.strip() == "no failed jobs and no dead-lettered webhooks"
    answer = json.dumps({"success": False, "error": "Session not connected", "pad": "x" * 300})
    exception = f"POST /api/messages/send answered 400: {answer}\n#0 trace line"
    ids = await _failures(h, ["high", "high", "low"], exception)

    high = h.run_cli("failed", "list", "--queue", "high").stdout.splitlines()
    assert [line.split()[0] for line in high] == [ids[1], ids[0]]  # newest first
    assert high[0].endswith("POST /api/messages/send answered 400: Session not connected")
    assert "pad" not in high[0]  # the quoted answer is never cut in the middle
    none = h.run_cli("failed", "list", "--queue", "nowhere").stdout.strip()
    assert none == "no failed jobs on nowhere and no dead-lettered webhooks"
    limited = h.run_cli("failed", "list", "--limit", "1").stdout.splitlines()
    assert limited == [limited[0], "(1 of 3 failed jobs shown: --limit)"]
    assert limited[0].startswith(ids[2])

    listed = json.loads(h.run_cli("failed", "list", "--json", "--queue", "high").stdout)
    assert listed["total"] == 2 and [j["id"] for j in listed["jobs"]] == [ids[1], ids[0]]
    shown = json.loads(h.run_cli("failed", "show", ids[0]).stdout)
    assert shown["exception"] == exception  # whole on show

    retried = json.loads(h.run_cli("failed", "retry", "--all", "--queue", "low", "--json").stdout)
    assert retried == {"retried": [ids[2]], "skipped": {}}
    assert await h.redis.llen(h.keys("low").list) == 1
    assert await h.redis.llen(h.keys("high").list) == 0
    forgot = json.loads(h.run_cli("failed", "forget", ids[0], "--json").stdout)
    assert forgot == {"forgotten": ids[0]}


def test_a_headline_is_one_line_within_its_width_and_never_cuts_a_quoted_answer() -> None:
    traceback = 'Traceback (most recent call last):\n  File "x"\nValueError: bad\n(tried 3 times)'
    assert headline(traceback) == "ValueError: bad (tried 3 times)"
    assert headline("E: short\n#0 more") == "E: short"
    words = "word " * 40
    assert headline(words).endswith("…") and len(headline(words)) <= 100
    unsaid = "answered 500: " + json.dumps({"pad": "x" * 200})
    assert headline(unsaid) == "answered 500: …"
    assert headline("") == ""
