"""Worker tests run against the real Redis and MariaDB on 127.0.0.1.

Every test gets its own key prefix (``test-<hex>:``) and, when it asks for MySQL, its own
database with Laravel's ``failed_jobs`` table; both are removed afterwards, so the suite
can share the servers with CI and with other suites.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import aiomysql
import pytest
import redis.asyncio as aioredis

from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.queues import QueueKeys, failed_key
from gateway.shared.settings import Settings
from tests.mysql import MYSQL, own_database
from workers.connections import redis_client
from workers.settings import WorkerSettings, load_worker_settings
from workers.worker import Pool, PoolConfig

REDIS_URL = "redis://127.0.0.1:6379/0"
REPO = Path(__file__).resolve().parents[2]
H = "tests.workers.sample_handlers"
HANDLERS = {
    "record": f"{H}:record",
    "work": f"{H}:work",
    "flaky": f"{H}:flaky",
    "hang": f"{H}:hang",
    "gated": f"{H}:gated",
}

# Laravel's Illuminate\Queue\LuaScripts::push, which pushRaw runs.
LARAVEL_PUSH = """
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('rpush', KEYS[2], 1)
return cjson.decode(ARGV[1])['id']
"""

FAILED_JOBS_DDL = """
CREATE TABLE failed_jobs (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  uuid VARCHAR(255) NOT NULL UNIQUE,
  connection TEXT NOT NULL,
  queue TEXT NOT NULL,
  payload LONGTEXT NOT NULL,
  exception LONGTEXT NOT NULL,
  failed_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
"""

T = TypeVar("T")


async def eventually(
    check: Callable[[], Awaitable[T] | T],
    until: Callable[[T], bool] = bool,
    *,
    timeout: float = 10.0,
    what: str = "condition",
) -> T:
    """Poll ``check`` (sync or async) until ``until(result)`` holds, for ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if until(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {result!r})")
        await asyncio.sleep(0.01)


def _toml(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)


@dataclass
class Harness:
    """One test's namespace: Redis prefix, optional MySQL database, config file, processes."""

    redis: aioredis.Redis
    prefix: str
    tmp: Path
    mysql_dsn: str = ""
    workers: dict[str, Any] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def key(self, name: str) -> str:
        """A scratch key under this test's prefix (cleaned up with it)."""
        return f"{self.prefix}t:{name}"

    def keys(self, queue: str) -> QueueKeys:
        return QueueKeys(self.prefix, queue)

    @property
    def failed_key(self) -> str:
        return failed_key(self.prefix)

    def environ(self, **extra: str) -> dict[str, str]:
        """Environment for load_settings and for worker subprocesses."""
        workers = {"handlers": HANDLERS, "metrics_port": 9101, **self.workers}
        config = self.tmp / "gateway.toml"
        config.write_text(
            "[workers]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in workers.items())
        )
        return {
            "PATH": os.environ.get("PATH", ""),
            "PYTHONPATH": str(REPO),
            "GATEWAY_CONFIG": str(config),
            "GATEWAY_REDIS_URL": REDIS_URL,
            "GATEWAY_REDIS_PREFIX": self.prefix,
            "GATEWAY_MYSQL_DSN": self.mysql_dsn,
            "GATEWAY_LOG_LEVEL": "WARNING",
            **self.env,
            **extra,
        }

    def settings(self, **extra: str) -> tuple[Settings, WorkerSettings]:
        return load_worker_settings(self.environ(**extra))

    def config(self, **overrides: Any) -> PoolConfig:
        """Pool config from this test's settings; keyword args replace PoolConfig fields."""
        config = PoolConfig.build(*self.settings())
        return replace(config, **{"metrics_port": 0, "idle_wait": 0.2, **overrides})

    async def push(self, queue: str, job: str, data: dict[str, Any], **options: Any) -> bytes:
        """Push as Laravel's pushRaw does; returns the payload."""
        payload = encode(new_payload(job, data, **options))
        await self.push_raw(queue, payload)
        return payload

    async def push_raw(self, queue: str, payload: bytes | str) -> None:
        """Laravel's pushRaw, byte for byte (its script reads the id, so it needs JSON)."""
        k = self.keys(queue)
        await self.redis.eval(LARAVEL_PUSH, 2, k.list, k.notify, payload)

    async def push_garbage(self, queue: str, payload: bytes) -> None:
        """The same two RPUSHes for a payload that is not JSON (a broken producer)."""
        k = self.keys(queue)
        async with self.redis.pipeline(transaction=True) as pipe:
            await pipe.rpush(k.list, payload).rpush(k.notify, 1).execute()

    async def log(self, name: str = "log") -> list[dict[str, Any]]:
        return [json.loads(x) for x in await self.redis.lrange(self.key(name), 0, -1)]

    async def failed(self) -> list[dict[str, Any]]:
        """The failed store in use: ``failed_jobs`` with a database, else the Redis list."""
        if self.mysql_dsn:
            return [{**row, "id": row["uuid"]} for row in await self.mysql_rows()]
        return [json.loads(x) for x in await self.redis.lrange(self.failed_key, 0, -1)]

    async def mysql_conn(self) -> aiomysql.Connection:
        db = self.mysql_dsn.rsplit("/", 1)[1]
        return await aiomysql.connect(**MYSQL, db=db, autocommit=True)

    async def mysql_rows(self) -> list[dict[str, Any]]:
        async with await self.mysql_conn() as conn, conn.cursor(aiomysql.DictCursor) as cur:
            await cur.execute("SELECT * FROM failed_jobs ORDER BY id")
            return list(await cur.fetchall())

    @contextlib.asynccontextmanager
    async def pool(
        self, config: PoolConfig | None = None, redis: aioredis.Redis | None = None
    ) -> AsyncIterator[Pool]:
        """A pool running in this process (on ``redis``, by default the harness' client),
        stopped (and drained) on exit."""
        mysql = None
        if self.mysql_dsn:
            from workers.connections import mysql_pool

            mysql = await mysql_pool(self.mysql_dsn)
        pool = Pool(config or self.config(), redis or self.redis, mysql)
        task = asyncio.create_task(pool.run())
        try:
            yield pool
        finally:
            pool.stop()
            await asyncio.wait_for(task, 10)
            if mysql is not None:
                mysql.close()
                await mysql.wait_closed()

    def spawn(self, *args: str, **env: str) -> subprocess.Popen[bytes]:
        """``python -m workers ARGS`` as a real process (stderr kept in the tmp dir)."""
        log = (self.tmp / f"worker-{len(self.procs)}.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, "-m", "workers", *args],
            cwd=REPO,
            env=self.environ(**env),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs.append(proc)
        return proc

    def run_cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "workers", *args],
            cwd=REPO,
            env=self.environ(),
            capture_output=True,
            text=True,
            timeout=30,
        )

    def output(self, proc: subprocess.Popen[bytes]) -> str:
        return (self.tmp / f"worker-{self.procs.index(proc)}.log").read_text()


@pytest.fixture
async def redis() -> AsyncIterator[aioredis.Redis]:
    client = redis_client(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def harness(redis: aioredis.Redis, tmp_path: Path) -> AsyncIterator[Harness]:
    h = Harness(redis=redis, prefix=f"test-{uuid.uuid4().hex}:", tmp=tmp_path)
    yield h
    for proc in h.procs:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
    keys = [k async for k in redis.scan_iter(match=f"{h.prefix}*", count=1000)]
    if keys:
        await redis.delete(*keys)


@pytest.fixture
async def mysql_harness(harness: Harness) -> AsyncIterator[Harness]:
    """The harness with its own MariaDB database holding Laravel's failed_jobs table."""
    async with own_database(FAILED_JOBS_DDL) as (db, _):
        harness.mysql_dsn = f"mysql://root@127.0.0.1:3306/{db}"
        yield harness
