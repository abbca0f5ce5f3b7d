"""The gateway and the workers raise their open-files limit to what the system allows."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from dev.ports import free_port
from gateway.shared.limits import WANTED
from tests.harness import REDIS_URL, ROOT, eventually
from tests.spawned import clean_env

HARD = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
LOW = 256  # a soft limit below any the programs keep


def _low_soft_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (LOW, HARD))


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


@pytest.mark.parametrize("module", ["gateway", "workers"])
async def test_a_low_soft_limit_is_raised_to_the_hard_one(module, redis_prefix):
    wanted = WANTED if HARD == resource.RLIM_INFINITY else min(WANTED, HARD)
    assert wanted > LOW  # any machine's hard limit allows more than LOW
    env = clean_env(
        REDIS_URL=REDIS_URL,
        REDIS_PREFIX=redis_prefix,
        GATEWAY_PORT=str(free_port()),
        GATEWAY_WORKERS_METRICS_PORT="0",
        WHATSAPP_INSTANCES=f"http://127.0.0.1:{free_port()}",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        module,
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        preexec_fn=_low_soft_limit,
    )
    try:

        async def raised() -> bool:
            return _soft_limit(proc.pid) == wanted

        await eventually(raised, timeout=15)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
