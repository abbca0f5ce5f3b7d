"""Jobs finished per queue and minute, as the pool writes them and the console reads them."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from gateway.shared.laravel.throughput import MINUTE, Tally, tally_key, throughput
from tests.harness import RedisServer
from tests.workers.conftest import Harness


async def test_counts_add_up_across_processes_within_the_window(harness: Harness) -> None:
    prefix, now = f"{harness.prefix}wa-gateway:", 100 * MINUTE + 5
    first, second = Tally(prefix), Tally(prefix)
    for _ in range(3):
        first.note("high", "done")
    second.note("high", "done")
    second.note("high", "failed")
    second.note("elsewhere", "done")  # a queue the console does not show
    await first.flush(harness.redis, now)
    await second.flush(harness.redis, now)
    old = Tally(prefix)
    old.note("high", "done")
    await old.flush(harness.redis, now - 10 * MINUTE)  # out of the 5-minute window
    seen = await throughput(harness.redis, prefix, ["high", "low"], now, minutes=5)
    assert seen == {
        "high": {"done": 4, "failed": 1, "retried": 0},
        "low": {"done": 0, "failed": 0, "retried": 0},
    }
    assert 0 < await harness.redis.ttl(tally_key(prefix, int(now // MINUTE))) <= 3900


async def test_counts_not_written_wait_for_the_next_write(
    own_redis: RedisServer, harness: Harness
) -> None:
    prefix, now = f"{harness.prefix}wa-gateway:", 200 * MINUTE
    tally = Tally(prefix)
    tally.note("q", "done")
    own_redis.stop()
    away = aioredis.Redis.from_url(own_redis.url, socket_connect_timeout=0.5)
    with pytest.raises((RedisConnectionError, OSError)):
        await tally.flush(away, now)
    await away.aclose()
    tally.note("q", "done")
    await tally.flush(harness.redis, now)
    assert (await throughput(harness.redis, prefix, ["q"], now))["q"]["done"] == 2
