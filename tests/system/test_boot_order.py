"""After a reboot the programs may start before Redis: they wait for it, they do not exit.

A program that exits at once is restarted by supervisor only a few times (``startretries``)
before it is left ``FATAL``, which would break the "everything back after a reboot" target.
"""

from __future__ import annotations

import json
import uuid

import aiohttp
import pytest
import redis.asyncio as aioredis

from dev.ports import free_port
from tests.harness import RedisServer, eventually
from tests.spawned import Spawned, clean_env

pytestmark = pytest.mark.timeout(60)


async def test_a_worker_started_before_redis_waits_and_then_takes_jobs() -> None:
    server = RedisServer(free_port())  # not started yet: the reboot brings it up late
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    env = clean_env(REDIS_URL=server.url, REDIS_PREFIX=prefix, GATEWAY_WORKERS_METRICS_PORT="0")
    worker = await Spawned.start("workers", "run", "--log-format", "json", env=env)
    try:
        await worker.logged(lambda rs: any("waiting" in r["message"] for r in rs))
        assert worker.proc.returncode is None

        server.start()
        client = aioredis.Redis.from_url(server.url)
        queue = f"{prefix}queues:whatsapp-high"
        job = {"uuid": "j1", "id": "j1", "job": "no.such.handler", "data": {}, "attempts": 0}
        await client.rpush(queue, json.dumps(job))
        await client.rpush(f"{queue}:notify", 1)
        await client.aclose()

        await worker.logged(lambda _: bool(worker.matching(logger="workers.jobs")), timeout=20)
        [line] = worker.matching(logger="workers.jobs")
        assert line["outcome"] == "failed"  # taken and settled: the worker runs
        assert await worker.stop() == 0
    finally:
        await worker.stop()
        server.stop()


async def test_a_gateway_started_before_redis_serves_and_says_redis_is_down(
    http: aiohttp.ClientSession,
) -> None:
    server = RedisServer(free_port())
    port = free_port()
    env = clean_env(
        REDIS_URL=server.url,
        REDIS_PREFIX=f"test-{uuid.uuid4().hex[:12]}:",
        WHATSAPP_INSTANCES=f"http://127.0.0.1:{free_port()}",
        GATEWAY_PORT=str(port),
    )
    gateway = await Spawned.start("gateway", "--log-format", "json", env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        await wait_healthy_or_503(http, url)
        async with http.get(f"{url}/health") as resp:
            assert (await resp.json())["redis"] == "down"
    finally:
        await gateway.stop()


async def wait_healthy_or_503(http: aiohttp.ClientSession, url: str) -> None:
    """The gateway answers /health (503 is fine: its one instance is not there either)."""

    async def answers() -> bool:
        try:
            async with http.get(f"{url}/health") as resp:
                return resp.status in (200, 503)
        except aiohttp.ClientError:
            return False

    await eventually(answers, timeout=15)
