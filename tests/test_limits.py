"""The gateway and the workers raise their open-files limit to what the system allows."""

from __future__ import annotations

import asyncio
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from dev.ports import free_port
from tests.conftest import REDIS_URL, ROOT, eventually
from tests.spawned import clean_env


def _low_soft_limit() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 8192))


def _soft_limit(pid: int) -> int:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            return int(line.split()[3])
    raise AssertionError("no open-files line")


@pytest.mark.parametrize("module", ["gateway", "workers"])
async def test_a_low_soft_limit_is_raised_to_the_hard_one(module, redis_prefix):
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 8192:
        pytest.skip("this machine's hard limit on open files is below 8192")
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
            return _soft_limit(proc.pid) == 8192

        await eventually(raised, timeout=15)
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)
