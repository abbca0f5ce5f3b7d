"""Pacing by consecutive slots, and delayed jobs started on time by an idle pool."""

from __future__ import annotations

import statistics
import time

import pytest

from tests.workers.conftest import Harness, eventually
from workers.handlers import JobContext
from workers.jobs import encode, new_payload
from workers.worker import Pool

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
