"""The workers against a primary with a replica: outcomes confirmed by ``WAIT`` when
``redis_min_replicas`` asks for it, and a whole worker process through a Sentinel failover."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections import Counter
from dataclasses import replace

from tests.redis_servers import Topology, until
from tests.workers.conftest import Harness, eventually
from tests.workers.test_pacing import Receiver
from workers.connections import redis_client
from workers.handlers import JobContext
from workers.metrics import WorkerMetrics


def counted(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


async def test_with_min_replicas_an_outcome_counts_once_a_replica_has_it(
    harness: Harness, topology: Topology
) -> None:
    """The replica goes away while a job runs: its outcome is kept, written again and not
    counted, and no new job starts; the replica comes back: it is confirmed, counted, and
    the pool goes on. Each job ran once."""
    primary = redis_client(f"redis://127.0.0.1:{topology.primary}/0")
    harness.redis, shared = primary, harness.redis
    runs: list[int] = []
    gate = asyncio.Event()

    async def note(job: JobContext) -> None:
        runs.append(job.data["n"])
        if job.data["n"] == 2:
            await gate.wait()

    config = replace(harness.config(queues=("q",)), min_replicas=1)
    try:
        async with harness.pool(config, redis=primary) as pool:
            pool.handlers["note"] = note

            def done() -> float:
                return counted(pool.metrics, "workers_jobs_total", queue="q", outcome="done")

            await harness.push("q", "note", {"n": 1})
            await eventually(done, lambda n: n == 1, what="the first job, confirmed")
            assert topology.client(topology.replica).zcard(harness.keys("q").reserved) == 0
            await harness.push("q", "note", {"n": 2})
            await eventually(lambda: runs, lambda r: r == [1, 2], what="the second job")

            topology.processes[1].kill()  # the only replica
            topology.processes[1].wait()
            gate.set()
            await eventually(lambda: pool.unsettled, lambda n: n == 1, what="a kept outcome")
            await harness.push("q", "note", {"n": 3})
            unconfirmed = "workers_outcomes_unreplicated_total"
            await eventually(lambda: counted(pool.metrics, unconfirmed), lambda n: n >= 2)
            assert runs == [1, 2] and done() == 1  # nothing new started, nothing counted

            topology.start_replica()
            until(topology.replica_up, what="the replica back")
            await eventually(done, lambda n: n == 3, what="every job confirmed", timeout=20)
            assert runs == [1, 2, 3] and pool.unsettled == 0
    finally:
        harness.redis = shared
        with contextlib.suppress(Exception):
            await primary.aclose()


async def test_a_worker_process_follows_a_failover_under_load_losing_and_repeating_no_job(
    harness: Harness, topology: Topology, teardown: contextlib.AsyncExitStack
) -> None:
    """``python -m workers`` on the Sentinel URL, ``redis_min_replicas = 1``, 1,500 jobs
    posting to a loopback server: the primary is failed over while they run. Every job is
    posted exactly once, and the new primary holds none of them any more. (A take the worker
    could not have confirmed across the switch is left to its reservation's expiry: 5 s.)"""
    receiver = Receiver()
    await receiver.start(teardown)
    primary = redis_client(f"redis://127.0.0.1:{topology.primary}/0")
    harness.redis, shared = primary, harness.redis
    try:
        for n in range(1500):
            await harness.push("q", "http.post", {"url": receiver.url, "body": {"n": n}})
        keys = harness.keys("q")
        until(lambda: topology.client(topology.replica).llen(keys.list) == 1500, what="copies")
        worker = harness.spawn(
            "--queue", "q", "--concurrency", "8", "--metrics-port", "0",
            "--timeout", "2", "--retry-after", "5",
            GATEWAY_REDIS_URL=topology.url, GATEWAY_REDIS_MIN_REPLICAS="1",
        )  # fmt: skip
        await eventually(lambda: len(receiver.arrivals), lambda n: n >= 150, what="150 posts")
        promoted = topology.fail_over()
        await eventually(
            lambda: len(receiver.arrivals), lambda n: n >= 1500, timeout=60, what="every post"
        )
        new = topology.client(topology.replica)

        def emptied() -> bool:
            return new.llen(keys.list) + new.zcard(keys.reserved) + new.zcard(keys.delayed) == 0

        until(emptied, what=f"no job left on the new primary {promoted}")
        posted = Counter(body["n"] for _, body in receiver.arrivals)
        assert sorted(posted) == list(range(1500)), "a job was lost"
        assert max(posted.values()) == 1, [n for n, c in posted.items() if c > 1][:10]
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0, harness.output(worker)
        assert "Redis primary of" in harness.output(worker)  # it followed +switch-master
    finally:
        harness.redis = shared
        with contextlib.suppress(Exception):
            await primary.aclose()
