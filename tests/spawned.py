"""``python -m gateway`` and ``python -m workers`` as real processes, with their JSON logs.

Each process's stderr is read line by line as it comes, so a test can wait for a log line
(``await run.logged(...)``) instead of sleeping.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.harness import API_KEY, REDIS_URL, ROOT, eventually
from tests.supervised import LEAKY


def clean_env(**extra: str) -> dict[str, str]:
    """The test's own environment: nothing of the developer's shell about the gateway."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    return env | extra


def gateway_env(instances: list[str], prefix: str, **extra: str) -> dict[str, str]:
    """A gateway process's environment: these instances, the test's Redis prefix, the test
    key, and no periodic checks or reconciliation to race the test."""
    return clean_env(
        WHATSAPP_INSTANCES=",".join(instances),
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=prefix,
        LARAVEL_API_TOKEN=API_KEY,
        GATEWAY_HEALTH_INTERVAL="60",
        GATEWAY_RECONCILE_INTERVAL="60",
        GATEWAY_BACKEND_SEES="instance",  # as the in-process gateways (conftest)
        **extra,
    )


@dataclass
class Spawned:
    """One program run as a real process; ``lines`` is its stderr so far."""

    proc: asyncio.subprocess.Process
    lines: list[str] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None

    @classmethod
    async def start(cls, module: str, *args: str, env: dict[str, str]) -> Spawned:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            module,
            *args,
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        run = cls(proc)
        run.reader = asyncio.create_task(run._read())
        return run

    async def _read(self) -> None:
        assert self.proc.stderr is not None
        async for raw in self.proc.stderr:
            self.lines.append(raw.decode(errors="replace").rstrip("\n"))

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def records(self) -> list[dict[str, Any]]:
        """The JSON log lines so far (anything else, e.g. a traceback, is skipped)."""
        found = []
        for line in self.lines:
            with contextlib.suppress(ValueError):
                record = json.loads(line)
                if isinstance(record, dict):
                    found.append(record)
        return found

    def matching(self, **fields: Any) -> list[dict[str, Any]]:
        return [r for r in self.records() if all(r.get(k) == v for k, v in fields.items())]

    async def logged(
        self, check: Callable[[list[dict[str, Any]]], bool], timeout: float = 15
    ) -> None:
        """Wait until ``check(records)`` holds; the output is in the failure message."""

        async def holds() -> bool:
            return check(self.records()) or self.proc.returncode is not None

        with contextlib.suppress(AssertionError):
            await eventually(holds, timeout)
        assert check(self.records()), self.output

    def signal(self, sig: signal.Signals) -> None:
        self.proc.send_signal(sig)

    async def stop(self, timeout: float = 20) -> int:
        """SIGTERM and wait (SIGKILL after ``timeout``); returns the exit code."""
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self.reader is not None:
            await asyncio.wait_for(self.reader, 10)
        assert self.proc.returncode is not None
        return self.proc.returncode


def children_pids(run: Spawned) -> list[int]:
    """The children the parent reported when they all listened."""
    for record in run.records():
        if record.get("logger") == "gateway.run.parent" and "pids" in record:
            return list(record["pids"])
    return []


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError):
        # A zombie (exited, not yet reaped by its parent) is as good as gone.
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
    return True
