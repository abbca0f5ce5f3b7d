"""The workers against a primary with a replica: outcomes confirmed by ``WAIT`` when
``redis_min_replicas`` asks for it, and a whole worker process through a Sentinel failover."""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import replace

from tests.redis_servers import Topology, topology, until
from tests.workers.conftest import Harness, eventually
from workers.connections import redis_client
from workers.handlers import JobContext
from workers.metrics import WorkerMetrics

__all__ = ["topology"]  # the fixture


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
