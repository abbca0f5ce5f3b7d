"""``make bench-workers``: no-op jobs through this pool, SAQ and arq on the same Redis;
then a paced campaign through this pool.

Each engine runs in its own subprocess (uvloop, same concurrency) under its own key
namespace, which is deleted afterwards. The N jobs are enqueued first; the clock runs from
starting the worker until the N-th handler call, so enqueueing is not measured. This pool
is measured with its reservation guarantee intact: every job is reserved before it runs and
acknowledged after, and the run checks that nothing is left reserved.

The campaign: M jobs for one session on a queue paced at one send per interval. It reports
the pops (each job must be popped at most twice), the time against the ideal (M - 1)
intervals, and whether the sends left in the order pushed.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from gateway.shared.loader import load_settings
from workers.settings import load_worker_settings

ENGINES = ("ours", "saq", "arq")


class Counter:
    """Counts handler calls and fires when the last one arrives."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.count = 0
        self.done = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        if self.count >= self.target:
            self.done.set()


async def _delete(redis: Any, pattern: str) -> None:
    keys = [k async for k in redis.scan_iter(match=pattern, count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])


async def _in_chunks(calls: list[Callable[[], Awaitable[Any]]], size: int = 500) -> None:
    for i in range(0, len(calls), size):
        await asyncio.gather(*(call() for call in calls[i : i + size]))


@dataclasses.dataclass
class PoolRun:
    """One run of this pool over jobs pushed beforehand; see :func:`run_pool`."""

    seconds: float
    outcomes: dict[str, int]  # workers_jobs_total by outcome
    left: int  # jobs still reserved, waiting or failed afterwards


async def run_pool(
    url: str, queue: str, data: list[dict[str, Any]], concurrency: int, **workers: Any
) -> tuple[PoolRun, list[dict[str, Any]]]:
    """Push one job per ``data`` item, run this pool until every one was handled, and return
    the run and the data in the order the handler saw it. ``workers`` override settings."""
    from gateway.shared.laravel.jobs import encode, new_payload
    from gateway.shared.laravel.queues import QueueKeys, failed_key
    from workers.connections import redis_client
    from workers.handlers import JobContext
    from workers.metrics import OUTCOMES
    from workers.worker import Pool, PoolConfig

    prefix = f"bench-{uuid.uuid4().hex[:12]}:"
    settings, base = load_worker_settings()
    overrides = {"queues": (queue,), "concurrency": concurrency, "metrics_port": 0, **workers}
    config = dataclasses.replace(
        PoolConfig.build(settings, dataclasses.replace(base, **overrides)),
        redis_prefix=prefix,
        key_prefix=f"{prefix}gw:",
    )
    redis = redis_client(url, max_connections=2 * concurrency + 10)
    keys = QueueKeys(prefix, queue)
    counter = Counter(len(data))
    seen: list[dict[str, Any]] = []

    async def handler(job: JobContext) -> None:
        seen.append(job.data)
        counter.hit()

    try:
        async with redis.pipeline(transaction=False) as pipe:
            for item in data:
                pipe.rpush(keys.list, encode(new_payload("bench", item))).rpush(keys.notify, 1)
            await pipe.execute()
        pool = Pool(config, redis)
        pool.handlers["bench"] = handler
        began = time.perf_counter()
        run = asyncio.create_task(pool.run())
        await counter.done.wait()
        elapsed = time.perf_counter() - began
        pool.stop()
        await run
        sample = pool.metrics.registry.get_sample_value
        outcomes = {
            o: int(sample("workers_jobs_total", {"queue": queue, "outcome": o}) or 0)
            for o in OUTCOMES
        }
        left = sum(
            [
                await redis.zcard(keys.reserved),
                await redis.llen(keys.list),
                await redis.zcard(keys.delayed),
                await redis.llen(failed_key(prefix)),
            ]
        )
        return PoolRun(elapsed, outcomes, left), seen
    finally:
        await _delete(redis, f"{prefix}*")
        await redis.aclose()


async def bench_ours(url: str, jobs: int, concurrency: int) -> float:
    run, _ = await run_pool(url, "bench", [{}] * jobs, concurrency)
    if run.left:
        raise SystemExit(f"ours: {run.left} jobs left reserved, waiting or failed")
    return run.seconds


async def bench_saq(url: str, jobs: int, concurrency: int) -> float:
    from saq import Queue, Worker

    name = f"bench-{uuid.uuid4().hex[:12]}"
    queue = Queue.from_url(url, name=name)
    counter = Counter(jobs)

    async def noop(ctx: dict[str, Any]) -> None:
        counter.hit()

    try:
        await queue.connect()
        await _in_chunks([lambda: queue.enqueue("noop") for _ in range(jobs)])
        worker = Worker(queue, functions=[("noop", noop)], concurrency=concurrency)
        began = time.perf_counter()
        run = asyncio.create_task(worker.start())
        await counter.done.wait()
        elapsed = time.perf_counter() - began
        await worker.stop()
        run.cancel()
        return elapsed
    finally:
        await _delete(queue.redis, f"saq:{name}:*")
        await _delete(queue.redis, f"saq:job:{name}:*")
        await queue.disconnect()


async def bench_arq(url: str, jobs: int, concurrency: int) -> float:
    from arq import Worker, create_pool
    from arq.connections import RedisSettings
    from arq.worker import func

    tag = f"bench-{uuid.uuid4().hex[:12]}"
    settings = RedisSettings.from_dsn(url)
    redis = await create_pool(settings, default_queue_name=tag)
    counter = Counter(jobs)

    async def noop(ctx: dict[str, Any]) -> None:
        counter.hit()

    try:
        await _in_chunks(
            [lambda i=i: redis.enqueue_job("noop", _job_id=f"{tag}-{i}") for i in range(jobs)]
        )
        # poll_delay 0: arq's default (0.5 s between polls) would cap it near 20 jobs/s.
        worker = Worker(
            functions=[func(noop, name="noop")],
            queue_name=tag,
            redis_pool=redis,
            max_jobs=concurrency,
            poll_delay=0,
            handle_signals=False,
            burst=True,
        )
        began = time.perf_counter()
        run = asyncio.create_task(worker.async_run())
        await counter.done.wait()
        elapsed = time.perf_counter() - began
        await run
        return elapsed
    finally:
        await _delete(redis, f"*{tag}*")
        await redis.aclose()


async def bench_pacing(url: str, jobs: int, interval: float, concurrency: int) -> dict[str, Any]:
    data = [{"session_id": "one-number", "n": n} for n in range(jobs)]
    run, seen = await run_pool(
        url, "campaign", data, concurrency, min_send_interval={"campaign": interval}
    )
    pops = sum(run.outcomes[o] for o in ("done", "retried", "failed", "paced"))
    return {
        "seconds": run.seconds,
        "pops": pops,
        "fifo": [d["n"] for d in seen] == list(range(jobs)),
    }


def report_pacing(jobs: int, interval: float, concurrency: int) -> bool:
    url = load_settings(shared_only=True).redis_url
    result = uvloop.run(bench_pacing(url, jobs, interval, concurrency))
    ideal = (jobs - 1) * interval
    ok = result["pops"] <= 2 * jobs and result["fifo"]
    print(
        f"paced campaign: {jobs} jobs, one session, one send per {interval * 1000:g} ms,"
        f" concurrency {concurrency}\n"
        f"  pops: {result['pops']} ({result['pops'] / jobs:.2f} per job, at most 2)\n"
        f"  time: {result['seconds']:.2f} s (ideal {ideal:.2f} s, ratio"
        f" {result['seconds'] / ideal:.3f})\n"
        f"  order: {'FIFO' if result['fifo'] else 'NOT FIFO'}"
    )
    return ok


RUNNERS = {"ours": bench_ours, "saq": bench_saq, "arq": bench_arq}


def run_engine(engine: str, jobs: int, concurrency: int) -> None:
    """In the child: run one engine and print its result as one JSON line."""
    url = load_settings(shared_only=True).redis_url
    seconds = uvloop.run(RUNNERS[engine](url, jobs, concurrency))
    print(json.dumps({"engine": engine, "seconds": seconds, "rate": jobs / seconds}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.workers", description=__doc__)
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--engines", default=",".join(ENGINES), help="e.g. ours,saq")
    parser.add_argument("--engine", choices=ENGINES, help=argparse.SUPPRESS)
    parser.add_argument("--pacing-jobs", type=int, default=1000, help="0 skips the campaign")
    parser.add_argument("--pacing-interval", type=float, default=0.01, help="seconds")
    args = parser.parse_args(argv)
    if args.engine:
        run_engine(args.engine, args.jobs, args.concurrency)
        return 0
    print(f"{args.jobs} no-op jobs, concurrency {args.concurrency}, one process each")
    rates: dict[str, float] = {}
    for engine in args.engines.split(","):
        child = subprocess.run(
            [
                sys.executable,
                "-m",
                "dev.bench.workers",
                "--engine",
                engine,
                "--jobs",
                str(args.jobs),
                "--concurrency",
                str(args.concurrency),
            ],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parents[2],
        )
        if child.returncode != 0:
            tail = (child.stderr.strip().splitlines() or ["no output"])[-1]
            print(f"{engine:>5}: failed ({tail})")
            continue
        result = json.loads(child.stdout.strip().splitlines()[-1])
        rates[engine] = result["rate"]
        print(f"{engine:>5}: {result['rate']:9.0f} jobs/s  ({result['seconds']:.2f} s)")
    for peer in ("saq", "arq"):
        if "ours" in rates and peer in rates:
            print(f"ours/{peer}: {rates['ours'] / rates[peer]:.2f}")
    paced = args.pacing_jobs <= 0 or report_pacing(
        args.pacing_jobs, args.pacing_interval, args.concurrency
    )
    return 0 if rates and paced else 1


if __name__ == "__main__":
    raise SystemExit(main())
