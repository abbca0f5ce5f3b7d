"""``python -m workers``: the pool and the webhook relay until a signal, restarted while
Redis is away."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import logging
import signal
from collections.abc import Callable

from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.shared.laravel.prefixes import prefix_warning
from gateway.shared.limits import raise_open_files
from gateway.shared.redis_url import SwitchFollower
from gateway.shared.settings import Settings
from workers.connections import mysql_pool, redis_client
from workers.delivery import RelayConfig, WebhookRelay
from workers.settings import WorkerSettings
from workers.worker import Pool, PoolConfig


async def serve(
    args: argparse.Namespace, settings: Settings, config: PoolConfig, workers: WorkerSettings
) -> int:
    """The pool, and the webhook relay beside it when webhooks are delivered."""
    raise_open_files()
    relay = RelayConfig.build(settings, workers)
    slots = config.concurrency + (relay.concurrency + 1 if relay else 0)
    redis = redis_client(settings.redis_url, max_connections=2 * slots + 10)
    follower = SwitchFollower(settings.redis_url, [redis])
    follower.start()
    mysql = await mysql_pool(settings.mysql_dsn)
    try:
        pool = Pool(config, redis, mysql)
        relays = [WebhookRelay(relay, redis, pool.metrics)] if relay else []
        stopped = asyncio.Event()

        def stop() -> None:
            stopped.set()
            pool.stop()
            for r in relays:
                r.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, functools.partial(_restart, stop))
        if not await _until_redis_answers(redis, stopped):
            return 0
        with contextlib.suppress(RedisError, OSError):
            warning = await prefix_warning(redis, settings.redis_prefix, config.queues)
            if warning:
                logging.getLogger("workers").warning(warning)
        pool.metrics.serve(config.metrics_port, config.metrics_host)
        logging.getLogger("workers").info(
            "taking jobs from %s, %d at a time", ",".join(config.queues), config.concurrency
        )
        logging.getLogger("workers").info(
            "PHP job classes: %s",
            f"{config.php.workers} PHP processes in {config.php.app_path}"
            if config.php
            else "off (no Laravel app: set LARAVEL_APP_PATH), they fail as unknown jobs",
        )
        await asyncio.gather(pool.run(), *(r.run() for r in relays))
    finally:
        await follower.close()
        await redis.aclose()
        if mysql is not None:
            mysql.close()
            await mysql.wait_closed()
    return 0


async def _until_redis_answers(redis: Redis, stopped: asyncio.Event) -> bool:
    """Wait for Redis, which a reboot may start after the workers; False if stopped first.

    Exiting instead would make supervisor give up on the program after a few quick tries.
    """
    warned = False
    while not stopped.is_set():
        try:
            await redis.ping()
            return True
        except (RedisError, OSError) as exc:
            if not warned:
                logging.getLogger("workers").warning("Redis does not answer (%s); waiting", exc)
                warned = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 1)
    return False


def _restart(stop: Callable[[], None]) -> None:
    """SIGHUP (a reload): finish the running jobs and exit 0, to be started again by
    supervisor or systemd with the new settings and code."""
    logging.getLogger("workers").info(
        "reload: finishing running jobs, then exiting to start again with the new settings"
    )
    stop()
