"""The Lua scripts against the real Redis: Laravel's pop, migration, release, priority."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from gateway.shared.laravel.jobs import Job
from gateway.shared.laravel.queues import Queues
from tests.workers.conftest import Harness
from workers.php import is_php_job

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

    [job] = (await queues.reserve(5, retry_after=90)).jobs

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

    first = (await queues.reserve(3, retry_after=90)).jobs
    rest = (await queues.reserve(10, retry_after=90)).jobs

    assert [(j.queue, j.data["n"]) for j in first] == [("high", 4), ("mid", 2), ("mid", 5)]
    assert [(j.queue, j.data["n"]) for j in rest] == [("low", 1), ("low", 3)]
    assert (await queues.reserve(10, retry_after=90)).jobs == []


async def test_due_delayed_and_expired_reserved_jobs_come_back(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    now = time.time()
    await harness.redis.zadd(keys.delayed, {b'{"n":1,"attempts":1}': now - 1})
    await harness.redis.zadd(keys.delayed, {b'{"n":2,"attempts":0}': now + 60})
    await harness.redis.zadd(keys.reserved, {b'{"n":3,"attempts":2}': now - 1})
    await harness.redis.zadd(keys.reserved, {b'{"n":4,"attempts":1}': now + 60})

    jobs = (await queues.reserve(10, retry_after=90)).jobs

    assert sorted((j.payload["n"], j.attempts) for j in jobs) == [(1, 2), (3, 3)]
    assert await harness.redis.zcard(keys.delayed) == 1
    assert await harness.redis.zcard(keys.reserved) == 3  # n=4 plus the two just taken
    # nothing left to take: the take says when the delayed one is due
    empty = await queues.reserve(10, retry_after=90)
    assert (empty.jobs, empty.more) == ([], False)
    [(_, due)] = await harness.redis.zrange(keys.delayed, 0, 0, withscores=True)
    assert empty.next_due == pytest.approx(due, abs=0.05)  # reckoned from Redis' clock


async def test_release_moves_to_delayed_and_wakes_an_idle_pool(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    await harness.push("q", "record", {"n": 1})
    await harness.push("q", "record", {"n": 2})
    first, second = (await queues.reserve(2, retry_after=90)).jobs

    await queues.release(first, 30)
    await queues.release(second, 5)

    assert await harness.redis.zcard(keys.reserved) == 0
    delayed = await harness.redis.zrange(keys.delayed, 0, -1, withscores=True)
    assert [(json.loads(m)["data"]["n"], json.loads(m)["attempts"]) for m, _ in delayed] == [
        (2, 1),
        (1, 1),
    ]
    assert delayed[1][1] - delayed[0][1] > 20
    assert await harness.redis.llen(keys.notify) == 2  # one per release


async def test_a_late_release_does_not_copy_a_job_taken_again(harness: Harness) -> None:
    """A worker stalled past retry_after: the job went back and was taken again."""
    queues = Queues(harness.redis, harness.prefix, ["q"])
    keys = harness.keys("q")
    await harness.push("q", "record", {"n": 1})
    [stalled] = (await queues.reserve(1, retry_after=-1)).jobs  # its reservation is over
    [again] = (await queues.reserve(1, retry_after=90)).jobs  # moved back, taken as attempt 2
    assert again.attempts == 2

    await queues.release(stalled, 30)

    assert await harness.redis.zcard(keys.delayed) == 0
    assert await harness.redis.zrange(keys.reserved, 0, -1) == [again.raw]


async def test_payloads_cjson_cannot_read_are_reserved_not_dropped(harness: Harness) -> None:
    queues = Queues(harness.redis, harness.prefix, ["q"])
    for raw in (b"{broken", b"[1,2,3]", b'"just a string"'):
        await harness.push_garbage("q", raw)

    jobs = (await queues.reserve(10, retry_after=90)).jobs

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


def paced_queues(harness: Harness, names: list[str], seconds: float) -> Queues:
    return Queues(
        harness.redis,
        harness.prefix,
        names,
        key_prefix=harness.prefix,
        intervals=dict.fromkeys(names, seconds),
    )


async def test_pacing_hands_each_waiting_job_its_own_consecutive_slot(harness: Harness) -> None:
    queues = paced_queues(harness, ["camp"], 0.25)
    keys = harness.keys("camp")
    for n, session in enumerate(["A", "A", "B", "A", "B"]):
        await harness.push("camp", "record", {"n": n, "session_id": session})

    take = await queues.reserve(10, retry_after=90)

    assert [j.data["n"] for j in take.jobs] == [0, 2]  # each session's first runs now
    assert take.paced == ["camp"] * 3
    delayed = await harness.redis.zrange(keys.delayed, 0, -1, withscores=True)
    waiting = [(json.loads(m), due) for m, due in delayed]
    assert sorted((p["data"]["n"], p["attempts"]) for p, _ in waiting) == [(1, 0), (3, 0), (4, 0)]
    slots = {p["data"]["n"]: p["paceSlot"] for p, _ in waiting}
    assert slots[3] - slots[1] == 250  # A: consecutive slots, in the order taken
    due = {p["data"]["n"]: d for p, d in waiting}
    assert 0.2 < due[1] - time.time() <= 0.25 and 0.45 < due[3] - time.time() <= 0.5
    assert abs(due[4] - due[1]) < 0.05  # B has its own slots
    assert await harness.redis.llen(keys.notify) == 0  # every pop took its notify element

    # due before their slot (scored by a clock ahead), they wait on for it, not popped
    await harness.redis.zadd(keys.delayed, {m: i for i, (m, _) in enumerate(delayed)})
    early = await queues.reserve(10, retry_after=90)
    assert (early.jobs, early.paced) == ([], [])
    assert await harness.redis.llen(keys.list) == 0
    back = await harness.redis.zrange(keys.delayed, 0, -1, withscores=True)
    assert sorted((json.loads(m)["data"]["n"], d) for m, d in back) == sorted(
        (p["data"]["n"], d) for p, d in waiting
    )

    # on their slots, they run without asking again; the reserved copy drops the slot
    again: list[Job] = []
    while len(again) < 3:
        again += await _on_slot(queues, harness, keys.delayed)
    assert [j.data["n"] for j in again] == [p["data"]["n"] for p, _ in waiting]
    assert all("paceSlot" not in j.payload and j.attempts == 1 for j in again)


async def _on_slot(queues: Queues, harness: Harness, delayed: str) -> list[Job]:
    """Wait until the earliest delayed job is due on Redis' clock, then take it."""
    [(_, due)] = await harness.redis.zrange(delayed, 0, 0, withscores=True)
    seconds, micros = await harness.redis.time()
    await asyncio.sleep(max(0.0, due - (seconds + micros / 1e6)))
    take = await queues.reserve(10, retry_after=90)
    assert take.paced == []
    return take.jobs


async def test_one_session_is_paced_across_every_paced_queue(harness: Harness) -> None:
    queues = paced_queues(harness, ["urgent", "camp"], 0.5)
    await harness.push("camp", "record", {"session_id": 7})
    await harness.push("urgent", "record", {"session_id": "7"})

    take = await queues.reserve(10, retry_after=90)

    assert [j.queue for j in take.jobs] == ["urgent"] and take.paced == ["camp"]
    [(raw, due)] = await harness.redis.zrange(harness.keys("camp").delayed, 0, -1, withscores=True)
    assert 0.4 < due - time.time() <= 0.5
    next_free, shift = (await harness.redis.hget(queues.pacing[0], "7")).split()
    assert int(next_free) == json.loads(raw)["paceSlot"] + 500 and int(shift) == 0


async def test_a_take_paces_at_most_a_batch_and_says_there_is_more(harness: Harness) -> None:
    queues = paced_queues(harness, ["camp"], 0.01)
    keys = harness.keys("camp")
    busy_until = int(time.time() * 1000) + 60_000  # A's next free slot: every job must wait
    await harness.redis.hset(queues.pacing[0], "A", f"{busy_until} 0")
    await harness.redis.zadd(queues.pacing[1], {"A": busy_until})
    async with harness.redis.pipeline(transaction=False) as pipe:
        for n in range(1002):
            pipe.rpush(keys.list, json.dumps({"n": n, "data": {"session_id": "A"}}))
        await pipe.execute()

    first = await queues.reserve(1, retry_after=90)
    second = await queues.reserve(1, retry_after=90)

    assert (len(first.jobs), len(first.paced), first.more) == (0, 1000, True)
    assert (len(second.jobs), len(second.paced), second.more) == (0, 2, False)
    assert second.next_due is not None


async def test_without_a_free_php_process_php_jobs_stay_in_place_and_python_ones_are_taken(
    harness: Harness,
) -> None:
    names = [
        "Illuminate\\Queue\\CallQueuedHandler@call",
        "whatsapp.send_message",
        "\\App\\Jobs\\Legacy@fire",
        "App\\Jobs\\X@handle; rm -rf /",
        "App\\\\Jobs\\X@handle",
        "record@handle",  # a Python handler's name: Python wins
        "SendEmail@handle",
        "App\\Jobs\\Legacy",  # an old-style string job: PHP calls its fire()
        "App\\Jobs\\Legacy@",
    ]
    for n, name in enumerate(names):
        await harness.push("q", name, {"n": n})
    queues = Queues(harness.redis, harness.prefix, ["q"], python_jobs=["record@handle"])

    take = await queues.reserve(10, retry_after=90, php_free=0)

    in_php = [n for n, name in enumerate(names) if is_php_job(name) and name != "record@handle"]
    assert [j.data["n"] for j in take.jobs] == [n for n in range(9) if n not in in_php]
    assert take.php_left == len(in_php) == 4
    left = await harness.redis.lrange(harness.keys("q").list, 0, -1)
    assert [json.loads(raw)["data"]["n"] for raw in left] == in_php  # in their places
    one = await queues.reserve(10, retry_after=90, php_free=1)
    assert [j.data["n"] for j in one.jobs] == in_php[:1] and one.php_left == 3


async def test_an_upgrade_keeps_the_slots_an_earlier_version_handed_out(harness: Harness) -> None:
    """An earlier version kept one key per session (its next free ms): once adopted, a new
    job of that session waits for it."""
    queues = paced_queues(harness, ["camp"], 0.5)
    seconds, micros = await harness.redis.time()
    now_ms = seconds * 1000 + micros // 1000
    old = f"{harness.prefix}workers:pace:"
    await harness.redis.set(f"{old}A", now_ms + 800, px=800)  # A's old slot ends at +0.8 s
    await harness.redis.set(f"{old}B", now_ms + 800, px=800)
    await harness.redis.hset(queues.pacing[0], "B", f"{now_ms} 0")  # B is already adopted

    assert await queues.adopt_old_pacing() == 1
    await harness.push("camp", "record", {"session_id": "A"})
    take = await queues.reserve(10, retry_after=90)

    assert take.jobs == [] and take.paced == ["camp"]
    [(raw, due)] = await harness.redis.zrange(harness.keys("camp").delayed, 0, -1, withscores=True)
    assert json.loads(raw)["paceSlot"] == now_ms + 800 and due * 1000 == now_ms + 800
    assert await harness.redis.exists(f"{old}A", f"{old}B") == 0
    assert await harness.redis.hget(queues.pacing[0], "B") == f"{now_ms} 0".encode()
