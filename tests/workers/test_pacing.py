"""Pacing by consecutive slots, and delayed jobs started on time by an idle pool."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import statistics
import time
from typing import Any

import pytest
from aiohttp import web

from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.queues import Queues
from tests.harness import serve
from tests.workers.conftest import Harness, eventually
from workers.handlers import JobContext
from workers.worker import Pool, PoolConfig

# Longer than any test here: a job on time was woken for, not found by a blocking wait's end.
IDLE_WAIT = 30.0


def sent_log(pool: Pool) -> list[tuple[str, int, float, int]]:
    """Register handler ``send``: notes (session, n, time, attempt) as it runs."""
    sent: list[tuple[str, int, float, int]] = []

    async def send(job: JobContext) -> None:
        sent.append((job.data["session_id"], job.data["n"], time.time(), job.attempt))

    pool.handlers["send"] = send
    return sent


def count(pool: Pool, queue: str, outcome: str) -> int:
    labels = {"queue": queue, "outcome": outcome}
    return int(pool.metrics.registry.get_sample_value("workers_jobs_total", labels) or 0)


async def test_200_paced_jobs_of_one_session_leave_in_order_with_at_most_2_pops_each(
    harness: Harness,
) -> None:
    interval = 0.01
    for n in range(200):
        await harness.push("camp", "send", {"session_id": "A", "n": n})
        if n % 20 == 0:
            await harness.push("camp", "send", {"session_id": "B", "n": n})
    config = harness.config(
        queues=("camp",),
        concurrency=10,
        min_send_interval={"camp": interval},
        idle_wait=IDLE_WAIT,
    )
    async with harness.pool(config) as pool:
        sent = sent_log(pool)
        await eventually(lambda: len(sent), lambda n: n == 210, what="all sends")

    a = [(n, t, attempt) for session, n, t, attempt in sent if session == "A"]
    assert [n for n, _, _ in a] == list(range(200))  # FIFO
    assert all(attempt == 1 for _, _, attempt in a)  # waiting is not an attempt
    pops = count(pool, "camp", "done") + count(pool, "camp", "paced")
    assert count(pool, "camp", "done") == 210 and pops <= 2 * 210
    assert a[-1][1] - a[0][1] >= 199 * interval - 0.05  # one slot each, none skipped
    b = [t for session, _, t, _ in sent if session == "B"]
    assert [n for session, n, _, _ in sent if session == "B"] == list(range(0, 200, 20))
    assert b[-1] < a[100][1]  # B is paced on its own slots, not behind A


def _stall(seconds: float) -> None:
    """Hold the event loop as a loaded machine does: nothing else runs meanwhile."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


async def test_paced_jobs_stay_in_order_and_spaced_when_the_pool_is_late_for_their_slots(
    harness: Harness,
) -> None:
    """Every 5th send stalls the pool for 3 intervals, so the next jobs come back late for
    their slots: they still leave in the order they were taken, an interval apart (less the
    25 ms a job may start early, and the jitter of starting a task)."""
    interval = 0.05
    for n in range(40):
        await harness.push("camp", "send", {"session_id": "A", "n": n})
    config = harness.config(
        queues=("camp",), concurrency=4, min_send_interval={"camp": interval}, idle_wait=IDLE_WAIT
    )
    async with harness.pool(config) as pool:
        sent: list[tuple[int, float]] = []

        async def send(job: JobContext) -> None:
            sent.append((job.data["n"], time.time()))
            if job.data["n"] % 5 == 0:
                _stall(3 * interval)

        pool.handlers["send"] = send
        await eventually(lambda: len(sent), lambda n: n == 40, what="all sends")
    assert [n for n, _ in sent] == list(range(40))
    gaps = [b - a for (_, a), (_, b) in itertools.pairwise(sent)]
    assert min(gaps) >= interval - 0.025 - 0.01, gaps
    assert count(pool, "camp", "done") == 40


async def test_pacing_holds_for_a_session_across_queues(harness: Harness) -> None:
    for queue in ("urgent", "camp"):
        await harness.push(queue, "send", {"session_id": "A", "n": 0})
    config = harness.config(
        queues=("urgent", "camp"),
        min_send_interval={"urgent": 0.5, "camp": 0.5},
        idle_wait=IDLE_WAIT,
    )
    async with harness.pool(config) as pool:
        sent = sent_log(pool)
        await eventually(lambda: len(sent) == 2, what="both sends")
    assert sent[1][2] - sent[0][2] >= 0.45  # slots 0.5 s apart; starts jitter a little


async def _blocked(harness: Harness) -> bool:
    return any(c.get("cmd") == "blpop" for c in await harness.redis.client_list())


@pytest.mark.parametrize("kind", ["delay", "backoff", "pacing"])
async def test_an_idle_pool_starts_a_delayed_job_on_time(harness: Harness, kind: str) -> None:
    """``--delay``, a backoff, a pacing slot: the job starts within milliseconds of its due
    time, though the pool blocks for 30 s at a time and nothing else is pushed."""
    config = harness.config(queues=("q",), min_send_interval={"q": 0.4}, idle_wait=IDLE_WAIT)
    starts: list[float] = []

    async def note(job: JobContext) -> None:
        starts.append(time.time())
        if kind == "backoff" and job.attempt == 1:
            raise RuntimeError("fails once")

    lateness = []
    async with harness.pool(config) as pool:
        pool.handlers["note"] = note
        for _ in range(3):
            starts.clear()
            await eventually(lambda: _blocked(harness), what="the pool blocking on notify")
            if kind == "delay":
                due = time.time() + 0.4
                await pool.queues.later("q", encode(new_payload("note", {})), 0.4)
                await eventually(lambda: len(starts) == 1, what="the delayed job")
            else:
                data = {"session_id": "S"} if kind == "pacing" else {}
                for _ in range(2 if kind == "pacing" else 1):
                    await harness.push("q", "note", data, backoff="0.4")
                await eventually(lambda: len(starts) == 2, what="the second start")
                due = starts[0] + 0.4
            lateness.append(starts[-1] - due)
            await eventually(
                lambda: harness.redis.zcard(harness.keys("q").reserved), _zero, what="acked"
            )
    assert -0.02 <= statistics.median(lateness) < 0.1, lateness


def _zero(n: int) -> bool:
    return n == 0


class Receiver:
    """A loopback HTTP server standing in for the gateway: notes when each send arrives."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[float, dict[str, Any]]] = []
        self.url = ""

    async def start(self, teardown: contextlib.AsyncExitStack) -> None:
        async def receive(request: web.Request) -> web.Response:
            self.arrivals.append((time.monotonic(), await request.json()))
            return web.json_response({"ok": True})

        app = web.Application()
        app.router.add_post("/send", receive)
        runner, base = await serve(app)
        teardown.push_async_callback(runner.cleanup)
        self.url = f"{base}/send"

    def gaps(self, session: str) -> list[float]:
        times = [t for t, body in self.arrivals if body["session_id"] == session]
        return [b - a for a, b in itertools.pairwise(times)]


async def post(job: JobContext) -> None:
    """Handler ``post``: the send, as an HTTP request to ``data.url``."""
    async with job.http.post(job.data["url"], json=job.data) as resp:
        resp.raise_for_status()


async def test_paced_jobs_that_come_back_late_ask_for_new_slots(
    harness: Harness, teardown: contextlib.AsyncExitStack
) -> None:
    """A's second and third sends hold slots 0.4 s and 0.8 s out, but the pool is busy with
    urgent work until 1.2 s: back late, they must not go out back to back."""
    receiver = Receiver()
    await receiver.start(teardown)
    blockers = {name: harness.key(name) for name in ("started", "done", "runs")}
    config = harness.config(
        queues=("urgent", "camp"), concurrency=2, min_send_interval={"camp": 0.4}
    )
    async with harness.pool(config) as pool:
        pool.handlers["post"] = post
        for n in range(3):
            await harness.push("camp", "post", {"session_id": "A", "n": n, "url": receiver.url})
        await eventually(lambda: harness.redis.zcard(harness.keys("camp").delayed), _two)
        for n in range(2):
            await harness.push("urgent", "work", {"n": n, "seconds": 1.2, **blockers})
        await eventually(lambda: harness.redis.scard(blockers["started"]), _two)
        await eventually(lambda: len(receiver.arrivals), lambda n: n == 3, what="3 sends")
    assert min(receiver.gaps("A")) >= 0.4 - 0.05, receiver.gaps("A")


async def test_pacing_holds_between_hosts_whose_clocks_disagree(
    harness: Harness, teardown: contextlib.AsyncExitStack
) -> None:
    """Two pools, one 2.5 s ahead of the other: a session's sends stay 1 s apart whoever
    paces them and whoever migrates them back."""
    receiver = Receiver()
    await receiver.start(teardown)
    config = harness.config(queues=("camp",), concurrency=2, min_send_interval={"camp": 1.0})
    ahead, behind = (skewed_pool(harness, config, skew) for skew in (2.5, 0.0))
    for pool in (ahead, behind):
        pool.handlers["post"] = post
        task = asyncio.create_task(pool.run())
        teardown.push_async_callback(asyncio.wait_for, task, 10)
        teardown.callback(pool.stop)
    for n in range(4):
        await harness.push("camp", "post", {"session_id": "A", "n": n, "url": receiver.url})
    await eventually(lambda: len(receiver.arrivals), lambda n: n == 4, what="4 sends")
    assert min(receiver.gaps("A")) >= 1.0 - 0.05, receiver.gaps("A")


def skewed_pool(harness: Harness, config: PoolConfig, skew: float) -> Pool:
    """A pool whose host clock is ``skew`` seconds ahead of this one's."""
    pool = Pool(config, harness.redis)
    pool.queues = Queues(
        harness.redis,
        config.redis_prefix,
        config.queues,
        key_prefix=config.key_prefix,
        intervals=config.min_send_interval,
        clock=lambda: time.time() + skew,
    )
    return pool


def _two(n: int) -> bool:
    return n == 2
