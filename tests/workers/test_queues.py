"""The Lua scripts against the real Redis: Laravel's pop, migration, release, priority."""

from __future__ import annotations

import json
import time

from tests.workers.conftest import Harness
from workers.jobs import with_attempts
from workers.queues import Queues

LARAVEL_PAYLOAD = (
    '{"uuid":"9f1c","displayName":"whatsapp.send_message","job":"whatsapp.send_message",'
    '"maxTries":null,"maxExceptions":null,"failOnTimeout":false,"backoff":null,"timeout":null,'
    '"retryUntil":null,"data":{"session_id":"s1","message":"hi \\/ there","extra":{"k":[1]}},'
    '"id":"9f1c","attempts":0,"custom":"kept"}'
)


async def test_reserve_is_laravels_pop(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    await harness.push_raw("q", LARAVEL_PAYLOAD)
    before = time.time()

    [job] = await queues.reserve(5, retry_after=90)

    assert job.queue == "q" and job.attempts == 1 and job.error is None
    expected = {**json.loads(LARAVEL_PAYLOAD), "attempts": 1}
    assert job.payload == expected  # every key kept, only attempts changed
    [(member, score)] = await harness.redis.zrange(keys.reserved, 0, -1, withscores=True)
    assert member == job.raw
    assert before + 90 <= score <= time.time() + 90
    assert await harness.redis.llen(keys.list) == 0
    assert await harness.redis.llen(keys.notify) == 0

    await queues.delete(job)
    assert await harness.redis.zcard(keys.reserved) == 0


async def test_reserve_takes_earlier_queues_first_across_queues(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["high", "mid", "low"])
    for queue, n in [("low", 1), ("mid", 2), ("low", 3), ("high", 4), ("mid", 5)]:
        await harness.push(queue, "record", {"n": n})

    first = await queues.reserve(3, retry_after=90)
    rest = await queues.reserve(10, retry_after=90)

    assert [(j.queue, j.data["n"]) for j in first] == [("high", 4), ("mid", 2), ("mid", 5)]
    assert [(j.queue, j.data["n"]) for j in rest] == [("low", 1), ("low", 3)]
    assert await queues.reserve(10, retry_after=90) == []


async def test_due_delayed_and_expired_reserved_jobs_come_back(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    now = time.time()
    await harness.redis.zadd(keys.delayed, {b'{"n":1,"attempts":1}': now - 1})
    await harness.redis.zadd(keys.delayed, {b'{"n":2,"attempts":0}': now + 60})
    await harness.redis.zadd(keys.reserved, {b'{"n":3,"attempts":2}': now - 1})
    await harness.redis.zadd(keys.reserved, {b'{"n":4,"attempts":1}': now + 60})

    jobs = await queues.reserve(10, retry_after=90)

    assert sorted((j.payload["n"], j.attempts) for j in jobs) == [(1, 2), (3, 3)]
    assert await harness.redis.zcard(keys.delayed) == 1
    assert await harness.redis.zcard(keys.reserved) == 3  # n=4 plus the two just taken


async def test_release_moves_to_delayed_optionally_rewritten(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    await harness.push("q", "record", {"n": 1})
    await harness.push("q", "record", {"n": 2})
    first, second = await queues.reserve(2, retry_after=90)

    await queues.release(first, 30)
    await queues.release(second, 5, with_attempts(second.raw, 0))

    assert await harness.redis.zcard(keys.reserved) == 0
    delayed = await harness.redis.zrange(keys.delayed, 0, -1, withscores=True)
    assert [(json.loads(m)["data"]["n"], json.loads(m)["attempts"]) for m, _ in delayed] == [
        (2, 0),
        (1, 1),
    ]
    assert delayed[1][1] - delayed[0][1] > 20


async def test_a_late_release_does_not_copy_a_job_taken_again(harness: Harness) -> None:
    """A worker stalled past retry_after: the job went back and was taken again."""
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    await harness.push("q", "record", {"n": 1})
    [stalled] = await queues.reserve(1, retry_after=-1)  # its reservation is already over
    [again] = await queues.reserve(1, retry_after=90)  # moved back and taken as attempt 2
    assert again.attempts == 2

    await queues.release(stalled, 30)

    assert await harness.redis.zcard(keys.delayed) == 0
    assert await harness.redis.zrange(keys.reserved, 0, -1) == [again.raw]


async def test_payloads_cjson_cannot_read_are_reserved_not_dropped(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    for raw in (b"{broken", b"[1,2,3]", b'"just a string"'):
        await harness.push_garbage("q", raw)

    jobs = await queues.reserve(10, retry_after=90)

    assert [j.raw for j in jobs] == [b"{broken", b"[1,2,3]", b'"just a string"']
    assert all(j.payload is None and j.error for j in jobs)
    assert await harness.redis.zcard(harness.keys("q").reserved) == 3


async def test_depths(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["a", "b", "c"])
    await harness.push("a", "record", {}, pushedAt=time.time() - 30)
    await harness.push("a", "record", {})
    await harness.push_raw("b", LARAVEL_PAYLOAD)  # no push time
    await harness.push_raw("b", LARAVEL_PAYLOAD)
    await queues.later("b", b'{"attempts":0}', 60)
    await Queues(harness.redis, harness.prefix, ["b"]).reserve(1, retry_after=90)

    a, b, c = await queues.depths()

    assert (a.waiting, a.delayed, a.reserved) == (2, 0, 0)
    assert 29 <= a.oldest_age < 40
    assert (b.waiting, b.delayed, b.reserved, b.oldest_age) == (1, 1, 1, None)
    assert (c.waiting, c.delayed, c.reserved, c.oldest_age) == (0, 0, 0, None)
