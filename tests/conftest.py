"""Shared fixtures: real Redis, real simulators and real gateways on loopback ports.

Every test gets its own Redis key prefix and deletes its keys afterwards, since CI shares
the Redis server with anything else running on the machine.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis

from dev.ports import free_port
from dev.simulator import SimulatorConfig
from dev.simulator import create_app as create_simulator
from gateway.app import GatewayRunner, create_app
from tests.accounts import DDL as ACCOUNTS_DDL
from tests.accounts import AccountsDB
from tests.harness import (
    API_KEY,
    REDIS_URL,
    RedisServer,
    RunningGateway,
    Seen,
    Sim,
    gateway_settings,
    recording,
    serve,
)
from tests.mysql import own_database
from tests.redis_servers import Cluster, Topology, start_cluster, start_topology


@pytest.fixture
async def redis_prefix() -> AsyncIterator[str]:
    prefix = f"test-{uuid.uuid4().hex[:12]}:"
    yield prefix
    client = aioredis.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(f"{prefix}*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
async def redis_client() -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, decode_responses=True)
    yield client
    await client.aclose()


@pytest.fixture
async def teardown() -> AsyncIterator[contextlib.AsyncExitStack]:
    """Clean-ups a test registers as it starts things (servers, stand-ins), run at its end."""
    async with contextlib.AsyncExitStack() as stack:
        yield stack


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def simulators() -> AsyncIterator[Callable[..., Awaitable[list[Sim]]]]:
    """Start N simulators in this process, each a real HTTP server on its own port."""
    started: list[Sim] = []

    async def start(count: int = 4, ports: list[int] | None = None, **config: Any) -> list[Sim]:
        sims = []
        for port in ports or [free_port() for _ in range(count)]:
            url = f"http://127.0.0.1:{port}"
            cfg = SimulatorConfig(
                **{"api_key": API_KEY, "connect_delay": 0, **config}, public_url=url
            )
            app = create_simulator(cfg)
            seen: list[Seen] = []
            app.middlewares.insert(0, recording(seen))
            runner, _ = await serve(app, port)
            sims.append(Sim(url, app, runner, seen))
        started.extend(sims)
        return sims

    yield start
    for sim in started:
        await sim.runner.cleanup()


@pytest.fixture
def http_engine(request: pytest.FixtureRequest) -> str:
    """The engine the test's gateways serve with; a module runs under both with
    ``pytestmark = BOTH_ENGINES``."""
    return str(getattr(request, "param", "fast"))


@pytest.fixture
async def gateways(
    redis_prefix: str, http_engine: str
) -> AsyncIterator[Callable[..., Awaitable[RunningGateway]]]:
    """Start gateways in this process, sharing the test's Redis prefix."""
    started: list[RunningGateway] = []

    async def start(instances: list[str], **overrides: Any) -> RunningGateway:
        overrides.setdefault("http_engine", http_engine)
        settings = gateway_settings(instances, redis_prefix, **overrides)
        app = create_app(settings)
        runner, url = await serve(app, settings.port, GatewayRunner)
        running = RunningGateway(url, app, runner)
        started.append(running)
        return running

    yield start
    for running in started:
        await running.runner.cleanup()


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    server = RedisServer(free_port())
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def accounts_db() -> AsyncIterator[AccountsDB]:
    """A database of the test's own with the backend's whatsapp_accounts table; dropped after."""
    async with own_database(*ACCOUNTS_DDL) as (name, conn):
        yield AccountsDB(name, conn)


@pytest.fixture
def topology(tmp_path: Path) -> Iterator[Topology]:
    """A Redis primary, a replica and three Sentinels of the test's own."""
    yield from start_topology(tmp_path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-primary Redis Cluster, once per module."""
    yield from start_cluster(tmp_path_factory.mktemp("cluster"))
