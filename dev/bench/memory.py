"""A gateway process's memory with many pinned sessions.

Writes N session pins into Redis under a bench prefix (as N creates through the gateways
would have left them; the ids are UUIDs, the longest kind the backend uses), starts one
gateway in front of the given instances, and reads its resident memory once it serves
(``VmRSS``) and the most it held while loading the pins (``VmHWM``). The keys are unlinked
afterwards.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import redis

from dev.bench.harness import KEY, ROOT, pinned, wait_http
from dev.ports import free_port
from gateway.shared.settings import Settings
from gateway.state.keys import Keys

BATCH = 10_000


@dataclass(frozen=True)
class Memory:
    sessions: int
    rss_mb: float  # serving, all pins loaded
    peak_mb: float  # the most, loading included
    load_s: float  # from start to serving


def status_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    raise LookupError(field)


def measure(
    sessions: int, instances: Sequence[str], redis_url: str, cores: tuple[int, ...]
) -> Memory:
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    keys = Keys(Settings(redis_prefix=prefix).key_prefix)
    client = redis.Redis.from_url(redis_url)
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="wa-bench-memory-", suffix=".log")[1])
    process: subprocess.Popen[bytes] | None = None
    try:
        for start in range(0, sessions, BATCH):
            pins = {
                str(uuid.UUID(int=n)): instances[n % len(instances)]
                for n in range(start, min(sessions, start + BATCH))
            }
            client.hset(keys.sessions, mapping=pins)  # type: ignore[arg-type]
        started = time.monotonic()
        with log.open("wb") as out:
            process = subprocess.Popen(
                pinned(cores, [sys.executable, "-m", "gateway"]),
                cwd=ROOT,
                env={
                    **os.environ,
                    "GATEWAY_PORT": str(port),
                    "WHATSAPP_INSTANCES": ",".join(instances),
                    "REDIS_URL": redis_url,
                    "REDIS_PREFIX": prefix,
                    "LARAVEL_API_TOKEN": KEY,
                    "GATEWAY_LOG_LEVEL": "WARNING",
                    "GATEWAY_RECONCILE_INTERVAL": "3600",
                },
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_http(f"http://127.0.0.1:{port}/health", process, log, timeout=120)
        loaded = time.monotonic() - started
        return Memory(
            sessions,
            status_mb(process.pid, "VmRSS"),
            status_mb(process.pid, "VmHWM"),
            loaded,
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait()
        client.unlink(*[k for k in client.scan_iter(f"{prefix}*")] or [keys.sessions])
        client.close()
        log.unlink(missing_ok=True)
