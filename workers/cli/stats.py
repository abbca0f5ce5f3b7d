"""``enqueue`` and ``stats``: one job pushed as Laravel would, and what waits on each queue."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from gateway.shared.laravel.failed import MYSQL_ERRORS
from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.queues import Depth, Queues
from gateway.shared.outbox import Backlog, Outbox
from gateway.shared.settings import Settings
from workers.cli.failed import _failures
from workers.connections import redis_client
from workers.worker import PoolConfig


async def enqueue(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    redis = redis_client(settings.redis_url)
    try:
        payload = new_payload(args.job, args.data)
        queues = Queues(redis, settings.redis_prefix, [args.queue_name])
        if args.delay > 0:
            await queues.later(args.queue_name, encode(payload), args.delay)
        else:
            await queues.push(args.queue_name, encode(payload))
    finally:
        await redis.aclose()
    print(payload["uuid"])
    return 0


def format_backlog(b: Backlog) -> str:
    """The webhook outbox in one line, for ``stats``."""
    if b.waiting == 0:
        return f"webhooks: 0 waiting, {b.dead} dead-lettered"
    oldest = "unknown" if b.oldest_age is None else f"{b.oldest_age:.1f}s"
    return (
        f"webhooks: {b.waiting} waiting in {b.lanes} sessions, oldest {oldest},"
        f" {b.dead} dead-lettered"
    )


def format_depths(depths: Sequence[Depth], failed: int | None, waiting: int = 0) -> str:
    """``failed`` None: the database does not answer, only ``waiting`` is known."""

    def age(d: Depth) -> str:
        if d.waiting == 0:
            return "-"
        return "unknown" if d.oldest_age is None else f"{d.oldest_age:.1f}s"

    width = max(len("queue"), *(len(d.queue) for d in depths))
    lines = [f"{'queue':<{width}}  {'waiting':>8}  {'delayed':>8}  {'reserved':>8}  oldest"]
    lines += [
        f"{d.queue:<{width}}  {d.waiting:>8}  {d.delayed:>8}  {d.reserved:>8}  {age(d)}"
        for d in depths
    ]
    if failed is None:
        lines.append(f"failed: unknown, the database does not answer ({waiting} waiting for it)")
    elif waiting:
        lines.append(f"failed: {failed} ({waiting} waiting for the database)")
    else:
        lines.append(f"failed: {failed}")
    return "\n".join(lines)


async def stats(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    async with _failures(settings, config) as failures:
        store = failures.store
        depths = await Queues(store.redis, settings.redis_prefix, config.queues).depths()
        waiting = await store.waiting()
        try:
            failed: int | None = await store.count()
        except MYSQL_ERRORS:
            failed = None
        backlog = await Outbox(store.redis, settings.key_prefix).backlog(time.time())
    print(format_depths(depths, failed, waiting))
    print(format_backlog(backlog))
    return 0
