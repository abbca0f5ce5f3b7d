"""The pool in this process against the real Redis (and MariaDB for failed_jobs)."""

from __future__ import annotations

import asyncio
import json
import random
import time

from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.queues import Queues
from tests.workers.conftest import Harness, eventually
from workers.handlers import JobContext
from workers.retry import Policy
from workers.worker import Pool

QUEUES = ("messaging", "campaign-stats", "whatsapp-urgent", "whatsapp-high", "whatsapp-normal")


def taken_in_order(pool: Pool) -> list[JobContext]:
    """Register handler ``order`` that notes each job as its task starts (before any await)."""
    seen: list[JobContext] = []

    async def order(job: JobContext) -> None:
        seen.append(job)

    pool.handlers["order"] = order
    return seen


def outcome(pool: Pool, queue: str, name: str) -> float:
    labels = {"queue": queue, "outcome": name}
    return pool.metrics.registry.get_sample_value("workers_jobs_total", labels) or 0.0


async def test_priority_order_over_1000_mixed_jobs(harness: Harness) -> None:
    rng = random.Random(4)
    mixed = [rng.randrange(len(QUEUES)) for _ in range(1000)]
    for n, q in enumerate(mixed):
        await harness.push(QUEUES[q], "order", {"n": n})
    config = harness.config(queues=QUEUES, concurrency=10)
    async with harness.pool(config) as pool:
        seen = taken_in_order(pool)
        await eventually(lambda: len(seen), lambda n: n == 1000, what="1000")

    ranks = [QUEUES.index(job.queue) for job in seen]
    assert ranks == sorted(ranks)
    # within a queue, first in first out
    for q in QUEUES:
        ns = [job.data["n"] for job in seen if job.queue == q]
        assert ns == sorted(ns) and len(ns) == mixed.count(QUEUES.index(q))


async def test_a_job_on_an_earlier_queue_overtakes_waiting_later_ones(harness: Harness) -> None:
    gate = asyncio.Event()
    seen: list[str] = []

    async def gated(job: JobContext) -> None:
        seen.append(f"{job.queue}:{job.data['n']}")
        await gate.wait()

    for n in range(3):
        await harness.push("low", "gated", {"n": n})
    async with harness.pool(harness.config(queues=("high", "low"), concurrency=1)) as pool:
        pool.handlers["gated"] = gated
        await eventually(lambda: seen == ["low:0"], what="first job")
        for n in range(2):
            await harness.push("high", "gated", {"n": n})
        gate.set()
        await eventually(lambda: len(seen) == 5, what="all jobs")
    assert seen == ["low:0", "high:0", "high:1", "low:1", "low:2"]


async def test_idle_pool_starts_a_pushed_job_within_50ms(harness: Harness) -> None:
    started: list[float] = []

    async def note(job: JobContext) -> None:
        started.append(time.time())

    async def blocked_in_blpop() -> bool:
        return any(c.get("cmd") == "blpop" for c in await harness.redis.client_list())

    config = harness.config(queues=("q",), idle_wait=5.0)
    async with harness.pool(config) as pool:
        pool.handlers["note"] = note
        delays = []
        for i in range(3):
            await eventually(blocked_in_blpop, what="the pool blocking on notify")
            pushed = time.time()
            await harness.push("q", "note", {})
            await eventually(lambda i=i: len(started) > i, what="start")
            delays.append(started[i] - pushed)
    assert sorted(delays)[1] < 0.05, delays


async def test_retry_waits_the_backoff_then_succeeds(harness: Harness) -> None:
    log = harness.key("log")
    await harness.push("q", "flaky", {"log": log, "succeed_on": 2}, backoff="1")
    async with harness.pool(harness.config(queues=("q",))) as pool:
        await eventually(lambda: harness.redis.llen(log), what="first attempt")
        keys = harness.keys("q")
        [(member, due)] = await eventually(
            lambda: harness.redis.zrange(keys.delayed, 0, -1, withscores=True), what="release"
        )
        first = (await harness.log())[0]
        assert 0.9 <= due - first["t"] <= 1.3
        assert json.loads(member)["attempts"] == 1
        await eventually(lambda: outcome(pool, "q", "done") == 1, what="done")
        assert outcome(pool, "q", "retried") == 1

    first, second = await harness.log()
    assert (first["attempt"], second["attempt"]) == (1, 2)
    assert second["t"] - first["t"] >= 0.95
    assert await harness.redis.zcard(keys.reserved) == 0
    assert await harness.redis.zcard(keys.delayed) == 0
    assert await harness.failed() == []


async def test_last_try_goes_to_the_failed_store_and_failed_jobs(mysql_harness: Harness) -> None:
    h = mysql_harness
    payload = await h.push("q", "flaky", {"log": h.key("log")}, maxTries=2, backoff=0)
    async with h.pool(h.config(queues=("q",))) as pool:
        [entry] = await eventually(h.failed, what="failed entry")
        await eventually(lambda: outcome(pool, "q", "failed") == 1, what="failure counted")
        assert outcome(pool, "q", "retried") == 1

    assert [e["attempt"] for e in await h.log()] == [1, 2]
    job = json.loads(payload)
    assert entry["id"] == entry["uuid"] == job["uuid"]
    assert entry["queue"] == "q" and entry["connection"] == "redis"
    # as Laravel stores it: the payload as the second attempt popped it
    assert json.loads(entry["payload"]) == {**job, "attempts": 1}
    assert "RuntimeError: flaky failure on attempt 2" in entry["exception"]
    assert "tried 2 times" in entry["exception"]
    assert await h.redis.llen(h.failed_key) == 0  # one store: the table
    assert await h.redis.zcard(h.keys("q").reserved) == 0


async def test_timeout_cancels_the_handler(harness: Harness) -> None:
    await harness.push("q", "hang", {"log": harness.key("log")}, timeout=0.3, maxTries=1)
    async with harness.pool(harness.config(queues=("q",))) as pool:
        started = time.monotonic()
        [entry] = await eventually(harness.failed, what="failed entry")
        assert time.monotonic() - started < 3
        assert outcome(pool, "q", "timed_out") == 1
        assert pool.metrics.in_flight._value.get() == 0
    assert "hang timed out after 0.3 s" in entry["exception"]


async def test_unknown_jobs_and_malformed_payloads_fail_at_once(harness: Harness) -> None:
    deep = b'{"job":"record","attempts":0,"deep":' + b"[" * 1001 + b"]" * 1001 + b"}"
    bad = [b"{not json", b"[1,2]", deep]  # JSON, but deeper than cjson reads
    for raw in bad:
        await harness.push_garbage("q", raw)
    unknown = await harness.push("q", "no.such.job", {})
    async with harness.pool(harness.config(queues=("q",))):
        entries = await eventually(harness.failed, lambda e: len(e) == 4, what="failures")
    by_payload = {e["payload"]: e["exception"] for e in entries}
    assert "not valid JSON" in by_payload["{not json"]
    assert "not a JSON object" in by_payload["[1,2]"]
    assert "InvalidPayload" in by_payload[deep.decode()]
    [unknown_entry] = [e for e in entries if "UnknownJob" in e["exception"]]
    assert unknown_entry["payload"] == unknown.decode()  # as popped, byte for byte
    assert json.loads(unknown_entry["payload"])["uuid"] == json.loads(unknown)["uuid"]
    keys = harness.keys("q")
    assert await harness.redis.zcard(keys.reserved) == 0
    assert await harness.redis.zcard(keys.delayed) == 0


async def test_a_job_past_its_tries_fails_without_running(harness: Harness) -> None:
    await harness.push("q", "record", {"log": harness.key("log")}, attempts=3, maxTries=3)
    async with harness.pool(harness.config(queues=("q",))):
        [entry] = await eventually(harness.failed, what="failed entry")
    assert "MaxAttemptsExceeded" in entry["exception"]
    assert await harness.log() == []


async def test_pacing_puts_a_job_back_without_counting_an_attempt(harness: Harness) -> None:
    log = harness.key("log")
    for n, session in enumerate(["A", "A", "B"]):
        await harness.push("camp", "record", {"log": log, "n": n, "session_id": session})
    config = harness.config(queues=("camp",), min_send_interval={"camp": 1.0}, concurrency=3)
    async with harness.pool(config) as pool:
        await eventually(lambda: harness.redis.llen(log), lambda n: n == 3, what="3 sends")
        assert outcome(pool, "camp", "paced") >= 1
    entries = {e["n"]: e for e in await harness.log()}
    assert [entries[n]["attempt"] for n in range(3)] == [1, 1, 1]
    assert entries[1]["t"] - entries[0]["t"] >= 0.95  # same session: one send per second
    assert entries[2]["t"] - entries[0]["t"] < 0.5  # other session: not held up


async def test_a_job_allowed_longer_than_retry_after_keeps_its_reservation(
    harness: Harness,
) -> None:
    k = {name: harness.key(name) for name in ("started", "done", "runs")}
    await harness.push("q", "work", {"n": 1, "seconds": 1.6, **k}, timeout=10)
    config = harness.config(queues=("q",), retry_after=0.6, concurrency=2, idle_wait=0.1)
    async with harness.pool(config):
        await eventually(lambda: harness.redis.sismember(k["done"], 1), what="done")
    assert await harness.redis.hget(k["runs"], 1) == b"1"


async def test_tries_0_in_the_settings_means_no_limit(harness: Harness) -> None:
    harness.workers["tries"] = 0
    log = harness.key("log")
    await harness.push("q", "flaky", {"log": log, "succeed_on": 5}, backoff=0)
    async with harness.pool(harness.config(queues=("q",))) as pool:
        await eventually(lambda: outcome(pool, "q", "done") == 1, what="done on the 5th try")
    assert [e["attempt"] for e in await harness.log()] == [1, 2, 3, 4, 5]
    assert await harness.failed() == []
    harness.workers["tries"] = -1
    result = harness.run_cli("check-config")
    assert result.returncode == 2
    assert "workers.tries: -1 must be 0 (no limit) or more" in result.stderr


async def test_a_job_timeout_of_0_means_no_timeout_as_in_laravel(harness: Harness) -> None:
    """``timeout: 0`` outlives the pool's --timeout (0.3 s) and its reservation (0.5 s)."""
    k = {name: harness.key(name) for name in ("started", "done", "runs")}
    await harness.push("q", "work", {"n": 1, "seconds": 1.2, **k}, timeout=0)
    config = harness.config(
        queues=("q",), policy=Policy(tries=1, timeout=0.3), retry_after=0.5, idle_wait=0.1
    )
    async with harness.pool(config):
        await eventually(lambda: harness.redis.sismember(k["done"], 1), what="done")
        await eventually(lambda: harness.redis.zcard(harness.keys("q").reserved), _none)
    assert await harness.redis.hget(k["runs"], 1) == b"1"
    assert await harness.failed() == []


def _none(n: int) -> bool:
    return n == 0


async def test_identical_junk_payloads_are_each_failed_on_their_own(
    mysql_harness: Harness,
) -> None:
    h = mysql_harness
    for _ in range(3):
        await h.push_garbage("q", b"")
    async with h.pool(h.config(queues=("q",))):
        rows = await eventually(h.mysql_rows, lambda r: len(r) == 3, what="3 failed_jobs rows")
        await eventually(lambda: h.redis.zcard(h.keys("q").reserved), _none)
    assert [r["payload"] for r in rows] == ["", "", ""]
    assert all("InvalidPayload" in r["exception"] for r in rows)
    assert await h.redis.llen(h.keys("q").list) == 0


async def test_identical_job_payloads_each_run_and_settle(harness: Harness) -> None:
    """The same payload pushed three times (a producer's retry loop): three runs, and each
    copy's reservation is its own (the first keeps the payload as it is, as Laravel's)."""
    log = harness.key("log")
    payload = encode(new_payload("record", {"log": log}))
    for _ in range(3):
        await harness.push_raw("q", payload)
    queues = Queues(harness.redis, harness.prefix, ["q"])
    jobs = (await queues.reserve(3, retry_after=90)).jobs
    assert len({j.raw for j in jobs}) == 3
    assert [j.payload.get("reservedCopy") for j in jobs if j.payload] == [None, 1, 2]
    assert all(j.body == payload for j in jobs)  # what PHP runs and failed_jobs keeps
    assert await harness.redis.zcard(harness.keys("q").reserved) == 3
    for job in jobs:
        await queues.release(job, 0)
    async with harness.pool(harness.config(queues=("q",))):
        await eventually(harness.log, lambda e: len(e) == 3, what="3 runs")
        await eventually(lambda: harness.redis.zcard(harness.keys("q").reserved), _none)
    assert await harness.redis.zcard(harness.keys("q").delayed) == 0
    assert await harness.failed() == []
