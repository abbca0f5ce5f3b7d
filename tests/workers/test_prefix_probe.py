"""A prefix with no queue keys while another prefix has some: said in one line by both
check-configs and by the pool's start-up. On a Redis of the test's own, so no other
test's keys are seen."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import sys

import redis.asyncio as aioredis

from gateway.shared.laravel.prefixes import prefix_warning
from tests.harness import RedisServer
from tests.workers.conftest import REPO, Harness, eventually


async def laravel_keys(server: RedisServer, prefix: str) -> None:
    client = aioredis.Redis.from_url(server.url)
    try:
        await client.rpush(f"{prefix}queues:whatsapp-high", "{}")
        await client.rpush(f"{prefix}queues:whatsapp-high:notify", 1)
        await client.zadd(f"{prefix}queues:whatsapp-campaign:delayed", {"{}": 1})
    finally:
        await client.aclose()


async def test_the_warning_names_the_configured_prefix_and_the_one_with_keys(
    own_redis: RedisServer,
) -> None:
    client = aioredis.Redis.from_url(own_redis.url)
    try:
        assert await prefix_warning(client, "acme_io_database_", ["whatsapp-high"]) is None
        await laravel_keys(own_redis, "acmeio_database_")
        warning = await prefix_warning(client, "acme_io_database_", ["whatsapp-high"])
        assert warning is not None and "\n" not in warning
        assert "'acme_io_database_'" in warning and "'acmeio_database_' (3 keys)" in warning
        assert await prefix_warning(client, "acmeio_database_", ["whatsapp-high"]) is None
        assert await prefix_warning(client, "acmeio_database_") is None  # found by the scan
    finally:
        await client.aclose()


def check_config(module: str, url: str, starting: str = "warning:") -> list[str]:
    """The lines of ``python -m MODULE check-config`` against ``url`` that start so."""
    result = subprocess.run(
        [sys.executable, "-m", module, "check-config"],
        cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "GATEWAY_REDIS_URL": url, "APP_NAME": "Acme.io"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return [line for line in result.stdout.splitlines() if line.startswith(starting)]


async def test_both_check_configs_say_so_in_one_line(own_redis: RedisServer) -> None:
    await laravel_keys(own_redis, "acme_io_database_")  # what an older loader wrote to
    for module in ("gateway", "workers"):
        [line] = await asyncio.to_thread(check_config, module, own_redis.url)
        assert "redis_prefix 'acmeio_database_'" in line and "'acme_io_database_'" in line
    await laravel_keys(own_redis, "acmeio_database_")
    for module in ("gateway", "workers"):
        assert await asyncio.to_thread(check_config, module, own_redis.url) == []


async def test_the_pool_says_so_when_it_starts(harness: Harness, own_redis: RedisServer) -> None:
    await laravel_keys(own_redis, "laravel_database_")
    worker = harness.spawn("--metrics-port", "0", GATEWAY_REDIS_URL=own_redis.url)
    await eventually(lambda: "no Laravel queue keys" in harness.output(worker), what="warning")
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 10) == 0
    [line] = [x for x in harness.output(worker).splitlines() if "no Laravel queue keys" in x]
    assert f"redis_prefix '{harness.prefix}'" in line and "'laravel_database_'" in line
