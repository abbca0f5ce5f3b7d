"""Laravel's own queue code and the pool: what Laravel pushes runs, and one failed store."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tests.laravel.conftest import Laravel
from tests.workers.conftest import HANDLERS, H, eventually


async def test_what_laravel_pushes_runs_in_the_pool(laravel: Laravel) -> None:
    h = laravel.harness
    log = h.key("log")
    laravel.push("record", {"log": log, "n": 1}, "q")
    payload = {"uuid": "u-2", "id": "u-2", "job": "record", "data": {"log": log, "n": 2}}
    laravel.push_raw(json.dumps(payload), "q")
    laravel.later(1, "record", {"log": log, "n": 3}, "q")
    assert await h.redis.zcard(h.keys("q").delayed) == 1

    async with h.pool(h.config(queues=("q",))):
        entries = await eventually(h.log, lambda e: len(e) == 3, what="three jobs ran")
    assert [(e["n"], e["attempt"]) for e in entries] == [(1, 1), (2, 1), (3, 1)]
    keys = h.keys("q")
    for key in (keys.list, keys.delayed, keys.reserved, keys.notify):
        assert await h.redis.exists(key) == 0, key


async def test_queue_failed_and_workers_failed_list_show_the_same_jobs(laravel: Laravel) -> None:
    """The pool fails a job Laravel pushed; PHP's queue:work fails a Python job: one store."""
    h = laravel.harness
    laravel.connection = "redis-main"
    laravel.timezone = h.env["APP_TIMEZONE"] = "Asia/Jakarta"
    h.workers["laravel_connection"] = "redis-main"
    laravel.push("no.such.job", {"phone": "+62 811"}, "pool")
    [pushed] = await h.redis.lrange(h.keys("pool").list, 0, -1)
    laravel.push("http.post", {"url": "http://127.0.0.1:9/"}, "php")

    async with h.pool(h.config(queues=("pool",))):
        [ours] = await eventually(h.failed, what="the pool failed its job")
    php = laravel.queue_work("php")
    assert php.returncode == 0, php.stderr

    by_laravel = {e["id"]: e for e in laravel.failed_all()}
    listed = h.run_cli("failed", "list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == list(by_laravel)  # same jobs, same order
    [theirs] = [e for e in by_laravel.values() if e["queue"] == "php"]
    assert 'Class "http.post" does not exist' in theirs["exception"]

    # the pool's row is the one Laravel's DatabaseUuidFailedJobProvider would write
    mine = by_laravel[ours["uuid"]]
    assert mine["payload"].encode() == pushed  # as popped, not the re-encoded reserved copy
    assert (mine["connection"], mine["queue"]) == ("redis-main", "pool")
    failed_at = datetime.strptime(mine["failed_at"], "%Y-%m-%d %H:%M:%S")
    now = datetime.now(ZoneInfo("Asia/Jakarta")).replace(tzinfo=None)
    assert abs(now - failed_at) < timedelta(minutes=2)
    assert theirs["connection"] == "redis-main"
    assert await h.redis.llen(h.failed_key) == 0


async def test_a_job_laravel_retried_is_never_run_again_by_workers_failed_retry(
    laravel: Laravel,
) -> None:
    h = laravel.harness
    log = h.key("log")
    laravel.push("later.ok", {"log": log}, "q")
    async with h.pool(h.config(queues=("q",))):
        [entry] = await eventually(h.failed, what="no handler yet")
    job_id = entry["uuid"]

    retried = laravel.artisan("queue:retry", job_id)
    assert retried.returncode == 0 and "pushed back onto the queue" in retried.stdout
    [raw] = await h.redis.lrange(h.keys("q").list, 0, -1)
    assert json.loads(raw)["attempts"] == 0
    again = h.run_cli("failed", "retry", job_id)
    assert again.returncode == 1 and f"no failed job {job_id}" in again.stderr

    h.workers["handlers"] = {**HANDLERS, "later.ok": f"{H}:record"}
    async with h.pool(h.config(queues=("q",))):
        await eventually(h.log, what="the retried job ran")
    assert h.run_cli("failed", "retry", "--all").stdout == "nothing to retry\n"
    assert len(await h.log()) == 1
    assert await h.redis.llen(h.keys("q").list) == 0


async def test_a_laravel_retry_that_fails_again_leaves_one_entry(laravel: Laravel) -> None:
    h = laravel.harness
    laravel.push("doomed", {}, "q")
    async with h.pool(h.config(queues=("q",))):
        [entry] = await eventually(h.failed, what="first failure")
        # The row is written before the reservation goes; retried in between, the job's
        # second attempt would be reserved under the same string as the first.
        await eventually(lambda: h.redis.zcard(h.keys("q").reserved), _none, what="settled")
        assert laravel.artisan("queue:retry", entry["uuid"]).returncode == 0
        await eventually(h.failed, lambda e: len(e) == 1, what="failed again")

    [line] = h.run_cli("failed", "list").stdout.splitlines()
    assert line.split()[0] == entry["uuid"]
    assert h.run_cli("failed", "retry", entry["uuid"]).returncode == 0
    assert await h.redis.llen(h.keys("q").list) == 1  # one copy, not two


def _none(count: int) -> bool:
    return count == 0


async def test_laravel_forget_and_flush_are_what_the_pool_sees(laravel: Laravel) -> None:
    h = laravel.harness
    for n in range(3):
        laravel.push("doomed", {"n": n}, "q")
    async with h.pool(h.config(queues=("q",))):
        entries = await eventually(h.failed, lambda e: len(e) == 3, what="three failures")
    first = entries[0]["uuid"]
    assert laravel.failed_find(first)["id"] == first
    assert laravel.artisan("queue:forget", first).returncode == 0
    assert h.run_cli("failed", "show", first).returncode == 1
    assert h.run_cli("failed", "forget", entries[1]["uuid"]).returncode == 0
    assert [e["id"] for e in laravel.failed_all()] == [entries[2]["uuid"]]
    assert laravel.artisan("queue:flush").returncode == 0
    assert h.run_cli("failed", "list").stdout == "no failed jobs and no dead-lettered webhooks\n"
