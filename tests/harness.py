"""What the tests share besides fixtures: real servers on loopback ports, the gateway's
test settings, polling with a deadline. Fixtures are in ``conftest.py`` and use these.

Every test gets its own Redis key prefix and deletes its keys afterwards, since CI shares
the Redis server with anything else running on the machine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dev.ports import free_port
from gateway.app import GATEWAY, Gateway
from gateway.shared.settings import HTTP_ENGINES, Settings

REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


ROOT = Path(__file__).resolve().parent.parent


API_KEY = "test-key"


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail with a clear message at the deadline."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.02)


async def serve(
    app: web.Application, port: int | None = None, runner_class: type[web.AppRunner] = web.AppRunner
) -> tuple[web.AppRunner, str]:
    runner = runner_class(app, access_log=None)
    await runner.setup()
    port = port or free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    return runner, f"http://127.0.0.1:{port}"


@dataclass(frozen=True)
class Seen:
    """One request as an instance received it, and when it was being handled."""

    method: str
    path_qs: str
    query: dict[str, str]
    headers: dict[str, str]
    body: bytes
    started: float
    ended: float


def peak_overlap(seen: list[Seen]) -> int:
    """The most requests of ``seen`` that were being handled at the same moment."""
    edges = sorted([(s.started, 1) for s in seen] + [(s.ended, -1) for s in seen])
    peak = now = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def recording(seen: list[Seen]) -> Callable[..., Awaitable[web.StreamResponse]]:
    """A middleware keeping every request an app receives, health checks included."""

    @web.middleware
    async def record(request: web.Request, handler: Any) -> web.StreamResponse:
        started = time.monotonic()
        try:
            body = await request.read()
        except web.HTTPException:
            raise
        except Exception:  # a body aiohttp cannot decode (bad gzip): the app's to answer
            body = b"<undecodable>"
        try:
            return await handler(request)
        finally:
            seen.append(
                Seen(
                    request.method,
                    request.raw_path,
                    dict(request.query),
                    dict(request.headers),
                    body,
                    started,
                    time.monotonic(),
                )
            )

    return record


@dataclass
class Sim:
    url: str
    app: web.Application
    runner: web.AppRunner
    seen: list[Seen] = dataclasses.field(default_factory=list)

    def calls(self, path: str) -> list[Seen]:
        """The requests it received for ``path`` (query string left out)."""
        return [s for s in self.seen if s.path_qs.partition("?")[0] == path]

    @property
    def sessions(self) -> dict[str, Any]:
        from dev.simulator import SESSIONS

        return self.app[SESSIONS]


@dataclass
class RunningGateway:
    url: str
    app: web.Application
    runner: web.AppRunner

    @property
    def gw(self) -> Gateway:
        return self.app[GATEWAY]


def gateway_settings(instances: list[str], prefix: str, **overrides: Any) -> Settings:
    base = Settings(
        port=free_port(),
        instances=tuple(instances),
        redis_url=REDIS_URL,
        redis_prefix=prefix,
        laravel_api_token=API_KEY,
        health_interval=60,
        reconcile_interval=60,
        # The instances' own URLs reach the backend, so a test can tell them apart; the
        # gateway's view (the default) has tests of its own (test_backend_view.py).
        backend_sees="instance",
    )
    return dataclasses.replace(base, **overrides)


BOTH_ENGINES = pytest.mark.parametrize("http_engine", HTTP_ENGINES, indirect=True)


def spawn(module: str, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Run ``python -m module`` as a real process, in the project's root."""
    return subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def wait_healthy(http: aiohttp.ClientSession, url: str, timeout: float = 15.0) -> None:
    async def answers() -> bool:
        try:
            async with http.get(f"{url}/health") as resp:
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(answers, timeout)


@dataclass
class RedisServer:
    """A Redis server of the test's own, to stop and start at will."""

    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def stop(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None


def sample(running: RunningGateway, name: str, **labels: str) -> float | None:
    """One value of a gateway's metrics, None when never counted."""
    return running.gw.metrics.registry.get_sample_value(name, labels)


async def gateway_command(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    """``python -m gateway ARGS`` as a real process: exit status, stdout, stderr."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        *args,
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()
