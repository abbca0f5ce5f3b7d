"""Several gateway processes on one port: a parent that starts, restarts and signals them.

Each child is a whole gateway (``python -m gateway`` again, with the same flags); they share
pins, counts and placements through Redis exactly as gateways on separate hosts do. The
parent serves nothing. It opens one listening socket per child slot, all on the port with
``SO_REUSEPORT`` so the kernel spreads connections over them, and keeps them open for its
whole life: a slot's child inherits its socket, and the one that replaces it (after a crash,
or on SIGUSR2 for an upgrade, one slot at a time, the new child accepting before the old one
stops) inherits the same socket. Connections waiting in a socket's queue are never reset by
a child going away: the next child of the slot accepts them. The parent passes
SIGTERM/SIGINT and SIGHUP on (checking a new configuration once, itself, before any child
sees it). A child whose parent died (even by SIGKILL) stops by itself, so a restarted parent
never competes with orphans for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import multiprocess

from gateway.lifecycle.reloadable import checked
from gateway.metrics import MULTIPROC_DIR
from gateway.shared import logs
from gateway.shared.settings import Settings

log = logging.getLogger("gateway.run.parent")

CHILD_ENV = "GATEWAY_CHILD_FDS"  # "lifeline,ready,socket": set by the parent for a child
BACKLOG = 1024
READY_TIMEOUT = 60.0  # a child that does not listen by then is killed
QUICK_DEATH = 2.0  # a child dying younger than this is restarted after a growing pause
MAX_PAUSE = 10.0


@dataclass
class ChildLink:
    """What a child gets from its parent: a pipe that ends with the parent, one to say it is
    ready, and the listening socket of its slot."""

    lifeline: int
    ready_fd: int
    socket_fd: int

    @classmethod
    def from_env(cls) -> ChildLink | None:
        fds = os.environ.get(CHILD_ENV, "").split(",")
        if len(fds) != 3 or not all(fd.isdigit() for fd in fds):
            return None
        return cls(*(int(fd) for fd in fds))

    def listening_socket(self) -> socket.socket:
        return socket.socket(fileno=self.socket_fd)

    def ready(self) -> None:
        """Tell the parent this child listens."""
        os.write(self.ready_fd, b"1")
        os.close(self.ready_fd)

    def watch_parent(self, loop: asyncio.AbstractEventLoop, on_gone: Callable[[], None]) -> None:
        """Call ``on_gone`` when the parent has exited (its end of the lifeline closes)."""

        def readable() -> None:
            if not os.read(self.lifeline, 1):
                loop.remove_reader(self.lifeline)
                log.warning("the parent process is gone; stopping")
                on_gone()

        loop.add_reader(self.lifeline, readable)


class ChildFailed(Exception):
    def __init__(self, code: int | None) -> None:
        super().__init__(f"a gateway process exited before it listened (code {code})")
        self.code = code


@dataclass
class Child:
    proc: asyncio.subprocess.Process
    slot: int
    started: float
    retiring: bool = False  # stopped on purpose (rolling restart, shutdown): not replaced


def listen(host: str, port: int, count: int) -> list[socket.socket]:
    """``count`` listening sockets on one port (``SO_REUSEPORT``), one per child slot."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.set_inheritable(True)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class Parent:
    """Keeps ``settings.processes`` children serving until SIGTERM or SIGINT."""

    def __init__(self, settings: Settings, load: Callable[[], Settings]) -> None:
        self.settings, self.load = settings, load
        self.argv = [sys.executable, "-m", "gateway", *sys.argv[1:]]
        self.children: dict[int, Child] = {}
        self.stopping = asyncio.Event()
        self.pause = 0.0
        self.rolling: asyncio.Task[None] | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.metrics_dir = ""
        self.lifeline = -1
        self.sockets: list[socket.socket] = []

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        s = self.settings
        try:
            self.sockets = listen(s.host, s.port, s.processes)
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", s.host, s.port, exc.strerror or exc)
            return 1
        self.metrics_dir = tempfile.mkdtemp(prefix="wa-gateway-metrics-")
        self.lifeline, keep = os.pipe()  # `keep` is never written: it closes when we exit
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stopping.set)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        loop.add_signal_handler(signal.SIGUSR2, self.roll)
        try:
            try:
                await asyncio.gather(*(self.spawn(slot) for slot in range(len(self.sockets))))
            except ChildFailed as exc:
                log.error("%s; stopping", exc)
                return exc.code or 1
            log.info(
                "%d gateway processes on http://%s:%d",
                len(self.children),
                self.settings.host,
                self.settings.port,
                extra={"fields": {"pids": sorted(self.children)}},
            )
            await self.stopping.wait()
            return 0
        finally:
            await self.stop_all()
            for fd in (self.lifeline, keep):
                os.close(fd)
            for sock in self.sockets:
                sock.close()
            shutil.rmtree(self.metrics_dir, ignore_errors=True)

    async def spawn(self, slot: int) -> Child:
        """Start the child of a slot, on the slot's socket, and wait until it accepts."""
        ready_read, ready_write = os.pipe()
        listening = self.sockets[slot].fileno()
        env = {
            **os.environ,
            MULTIPROC_DIR: self.metrics_dir,
            CHILD_ENV: f"{self.lifeline},{ready_write},{listening}",
        }
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.argv, env=env, pass_fds=(self.lifeline, ready_write, listening)
            )
        finally:
            os.close(ready_write)
        child = Child(proc, slot, time.monotonic())
        self.children[proc.pid] = child
        self._keep(self._watch(child))
        if not await _ready(ready_read):
            child.retiring = True
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise ChildFailed(await proc.wait())
        return child

    async def _watch(self, child: Child) -> None:
        """When a child exits on its own, start another (after a pause if it died young)."""
        code = await child.proc.wait()
        self.children.pop(child.proc.pid, None)
        multiprocess.mark_process_dead(child.proc.pid, self.metrics_dir)
        if child.retiring or self.stopping.is_set():
            return
        lived = time.monotonic() - child.started
        self.pause = 0.0 if lived > QUICK_DEATH else min(max(self.pause * 2, 0.5), MAX_PAUSE)
        log.warning(
            "gateway process %d exited with code %s after %.1f s; starting another",
            child.proc.pid,
            code,
            lived,
        )
        await asyncio.sleep(self.pause)
        while not self.stopping.is_set():
            try:
                await self.spawn(child.slot)
                return
            except ChildFailed as exc:
                self.pause = min(max(self.pause * 2, 0.5), MAX_PAUSE)
                log.error("%s; trying again in %.1f s", exc, self.pause)
                await asyncio.sleep(self.pause)

    def reload(self) -> None:
        """SIGHUP: check the new configuration once here, then let every child load it."""
        new = checked(self.settings, self.load)
        if new is None:
            return
        self.settings = new
        logs.configure(new.log_level, new.log_format)
        for pid in list(self.children):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGHUP)

    def roll(self) -> None:
        """SIGUSR2: replace every child, one at a time (for an upgrade)."""
        if self.rolling is None or self.rolling.done():
            self.rolling = self._keep(self._roll())

    async def _roll(self) -> None:
        olds = [c for c in self.children.values() if not c.retiring]
        for old in olds:
            try:
                await self.spawn(old.slot)
            except ChildFailed as exc:
                log.error("%s; rolling restart stopped, the running processes stay", exc)
                return
            await self._stop(old)
        log.info("rolling restart done: %d new gateway processes", len(olds))

    async def _stop(self, child: Child) -> None:
        child.retiring = True
        with contextlib.suppress(ProcessLookupError):
            child.proc.send_signal(signal.SIGTERM)
        await child.proc.wait()

    async def stop_all(self) -> None:
        """SIGTERM every child and wait: each finishes the requests it is serving."""
        self.stopping.set()
        await asyncio.gather(*(self._stop(c) for c in list(self.children.values())))
        for task in list(self.tasks):
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def _keep(self, coro: object) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)  # type: ignore[arg-type]
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task


async def _ready(fd: int) -> bool:
    """Wait for a child's ready byte; False when it exited (or hung) without one."""
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[bool] = loop.create_future()

    def readable() -> None:
        loop.remove_reader(fd)
        if not answer.done():
            answer.set_result(os.read(fd, 1) == b"1")

    loop.add_reader(fd, readable)
    try:
        return await asyncio.wait_for(answer, READY_TIMEOUT)
    except TimeoutError:
        loop.remove_reader(fd)
        return False
    finally:
        os.close(fd)
