"""``python -m workers enqueue | stats | failed ...`` as real processes."""

from __future__ import annotations

import json

from tests.workers.conftest import Harness, eventually


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


async def test_failed_list_show_retry_forget_flush_keep_mysql_in_step(
    mysql_harness: Harness,
) -> None:
    h = mysql_harness
    ids = [json.loads(await h.push("q", "no.such.job", {"n": n}))["uuid"] for n in range(3)]
    async with h.pool(h.config(queues=("q",))):
        await eventually(h.failed, lambda e: len(e) == 3, what="three failures")
    assert {r["uuid"] for r in await h.mysql_rows()} == set(ids)
    async with await h.mysql_conn() as conn, conn.cursor() as cur:  # a failure PHP recorded
        await cur.execute(
            "INSERT INTO failed_jobs (uuid, connection, queue, payload, exception)"
            " VALUES ('php-1', 'redis', 'q', '{}', 'x')"
        )

    listed = h.run_cli("failed", "list")
    # the three fail concurrently, so the list may hold them in any order
    assert sorted(line.split()[0] for line in listed.stdout.splitlines()) == sorted(ids)
    assert "UnknownJob" in listed.stdout

    shown = h.run_cli("failed", "show", ids[0])
    assert json.loads(shown.stdout)["id"] == ids[0]
    assert h.run_cli("failed", "show", "nope").returncode == 1

    assert h.run_cli("failed", "retry", ids[0]).stdout.strip() == f"retried {ids[0]}"
    [raw] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert (json.loads(raw)["uuid"], json.loads(raw)["attempts"]) == (ids[0], 0)
    assert await h.redis.llen(h.keys("q").notify) == 1

    assert h.run_cli("failed", "forget", ids[1]).returncode == 0
    assert [e["id"] for e in await h.failed()] == [ids[2]]
    assert {r["uuid"] for r in await h.mysql_rows()} == {ids[2], "php-1"}

    assert h.run_cli("failed", "flush").stdout.strip() == "flushed 1"
    assert await h.failed() == []
    assert {r["uuid"] for r in await h.mysql_rows()} == {"php-1"}  # not ours: left alone


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
