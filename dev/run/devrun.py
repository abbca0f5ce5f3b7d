"""One ``make run``: start stage by stage, stop everything on a signal or a child's death."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from dev.ports import free_port
from dev.run.output import Output
from dev.run.plan import (
    DEFAULT_CONNECT_DELAY,
    DEFAULT_READY_TIMEOUT,
    DEFAULT_SIM_PORTS,
    DEV_PREFIX,
    ROOT,
    DevrunError,
    banner,
    env_seconds,
    parse_backend_port,
    parse_simulator_ports,
    plan,
    redis_mode,
    stages,
)
from dev.run.processes import (
    Program,
    check_ports,
    choose_redis,
    launch,
    wait_ready,
    workers_available,
)
from gateway.shared.loader import load_settings
from gateway.shared.settings import Settings, SettingsError
from workers.settings import WorkerSettings, load_worker_settings


@dataclass
class Devrun:
    """One ``make run``: the children it started, and the stop request."""

    environ: Mapping[str, str]
    settings: Settings
    workers: WorkerSettings | None  # None: the workers are not started
    out: Output = field(default_factory=Output)
    children: list[Program] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    signals: int = 0
    made_token: bool = False  # the admin token was made for this run (and is shown)

    def on_signal(self, sig: signal.Signals) -> None:
        """First signal: stop in order. Second: kill everything now."""
        self.signals += 1
        if self.signals == 1:
            self.out.say("devrun", f"{sig.name}: stopping everything (again to kill)")
            self.stopping.set()
        else:
            self.out.say("devrun", f"{sig.name} again: killing everything")
            for child in self.children:
                child.signal(signal.SIGKILL)

    async def start(self) -> None:
        """Plan, check ports, then start stage by stage, each answering before the next."""
        started = time.monotonic()
        environ = self.environ
        var_dir = Path(environ.get("DEVRUN_VAR_DIR") or ROOT / "var")
        delay = env_seconds(environ, "DEVRUN_CONNECT_DELAY", DEFAULT_CONNECT_DELAY)
        timeout = env_seconds(environ, "DEVRUN_READY_TIMEOUT", DEFAULT_READY_TIMEOUT)
        ports = parse_simulator_ports(environ.get("DEVRUN_SIMULATOR_PORTS"))
        backend_port = parse_backend_port(environ.get("DEVRUN_BACKEND_PORT"))
        if ports is None:
            ports = tuple(free_port() for _ in DEFAULT_SIM_PORTS)
        redis = await choose_redis(self.settings, var_dir, redis_mode(environ))
        if redis.embedded:
            why = f"{redis.why}: " if redis.why else ""
            self.out.say("devrun", f"{why}starting an embedded Redis on port {redis.port}")
        specs = plan(
            self.settings,
            environ,
            redis=redis,
            sim_ports=ports,
            connect_delay=delay,
            workers=self.workers,
            backend_port=backend_port,
        )
        self.out = Output(s.name for s in specs)
        check_ports(specs)
        async with aiohttp.ClientSession() as http:
            for stage in stages(specs):
                for spec in stage:
                    self.children.append(await launch(spec, environ, self.out))
                await asyncio.gather(
                    *(wait_ready(c, http, timeout, self.out) for c in self.children[-len(stage) :])
                )
        pids = {c.spec.name: c.proc.pid for c in self.children}
        elapsed = time.monotonic() - started
        made = self.environ.get("GATEWAY_ADMIN_TOKEN") if self.made_token else None
        text = banner(self.settings, redis, specs, pids, delay, elapsed, self.workers, made)
        self.out.banner(text)

    async def supervise(self) -> int:
        """Wait for a stop signal (exit 0) or a child's death (exit 1)."""
        stop = asyncio.create_task(self.stopping.wait())
        exits = {asyncio.create_task(c.proc.wait()): c for c in self.children}
        try:
            done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, *exits):
                task.cancel()
        dead = [exits[t] for t in done if t in exits]
        if stop in done or not dead:
            return 0
        for child in dead:
            self.out.say(
                "devrun",
                f"{child.spec.name} exited unexpectedly with code {child.proc.returncode}; "
                "stopping the rest",
            )
        return 1

    async def stop_all(self) -> None:
        """Stop the children newest stage first, each stage's members together."""
        for stage in reversed(stages(c.spec for c in self.children)):
            names = {s.name for s in stage}
            await asyncio.gather(*(c.stop(self.out) for c in self.children if c.spec.name in names))
        if self.children:
            self.out.say("devrun", "all stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            starting = asyncio.create_task(self.start())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # a signal during start-up
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return 0
            stop.cancel()
            try:
                starting.result()
            except (DevrunError, OSError) as exc:
                self.out.say("devrun", f"cannot start: {exc}")
                return 1
            return await self.supervise()
        finally:
            await self.stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


def dev_environ(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """What ``make run`` adds so that, beside a real Laravel app, it touches nothing of it.

    Laravel's default prefix (no ``APP_NAME``) is ``laravel_database_``: the workers would
    drain that app's real queues, so a prefix of its own is used unless one was chosen. Without
    an admin token the admin API and CLI are off: one is made for the run (and shown).
    """
    extra: dict[str, str] = {}
    source = settings.sources.get("redis_prefix", "default")
    if source == "default" or source.startswith("no APP_NAME"):
        extra["REDIS_PREFIX"] = DEV_PREFIX
    if not settings.admin_token:
        extra["GATEWAY_ADMIN_TOKEN"] = secrets.token_urlsafe(18)
    return {**environ, **extra}


def main() -> None:
    environ = dict(os.environ)
    try:
        with contextlib.chdir(ROOT):  # where the children run, so all read the same files
            environ = dev_environ(environ, load_settings(environ))
            settings = load_settings(environ)
            workers = load_worker_settings(environ)[1] if workers_available(environ) else None
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

    async def go() -> int:
        made = environ.get("GATEWAY_ADMIN_TOKEN") != os.environ.get("GATEWAY_ADMIN_TOKEN")
        return await Devrun(environ, settings, workers, made_token=made).run()

    try:
        sys.exit(asyncio.run(go()))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed: nothing started
        sys.exit(130)
