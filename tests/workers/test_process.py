"""Workers as real processes: Laravel's pushRaw, SIGKILL, SIGTERM, pacing, /metrics."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time

import aiohttp
import pytest

from dev.ports import free_port
from tests.workers.conftest import Harness, eventually

FAST = ("--metrics-port", "0", "--retry-after", "2", "--timeout", "1", "--backoff", "0")


async def test_a_job_pushed_like_laravels_push_raw_runs(harness: Harness) -> None:
    log = harness.key("log")
    payload = (
        '{"uuid":"6f7c2e1a","displayName":"record","job":"record","maxTries":null,'
        '"maxExceptions":null,"failOnTimeout":false,"backoff":null,"timeout":null,'
        '"retryUntil":null,"data":{"n":7,"log":"' + log + '","url":"https:\\/\\/x.test\\/a"},'
        '"id":"6f7c2e1a","attempts":0}'
    )
    await harness.push_raw("whatsapp-high", payload)
    worker = harness.spawn(*FAST)  # default queues include whatsapp-high

    [entry] = await eventually(harness.log, what="the job to run")
    assert (entry["n"], entry["queue"], entry["attempt"]) == (7, "whatsapp-high", 1)
    keys = harness.keys("whatsapp-high")
    await eventually(lambda: harness.redis.zcard(keys.reserved), _none, what="ack")
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(10) == 0, harness.output(worker)


def _none(count: int) -> bool:
    return count == 0


async def test_sigkill_mid_job_loses_none_of_500_jobs(harness: Harness) -> None:
    k = {name: harness.key(name) for name in ("started", "done", "runs")}
    keys = harness.keys("q")
    for n in range(500):
        await harness.push("q", "work", {"n": n, "seconds": 0.05, **k})
    args = ("--queue", "q", "--concurrency", "25", *FAST)
    first = harness.spawn(*args)
    await eventually(lambda: harness.redis.scard(k["done"]), lambda c: c >= 100, what="100 done")
    interrupted = await eventually(lambda: _stopped_mid_run(harness, first, k), what="mid-run")
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    killed_at = time.time()

    second = harness.spawn(*args)
    await eventually(
        lambda: harness.redis.scard(k["done"]), lambda c: c == 500, timeout=30, what="all 500"
    )

    done = {int(n) for n in await harness.redis.smembers(k["done"])}
    assert done == set(range(500))
    runs = {int(n): int(c) for n, c in (await harness.redis.hgetall(k["runs"])).items()}
    assert all(runs[n] >= 1 for n in range(500))
    assert all(runs[n] == 1 for n in interrupted)  # they never finished before the kill
    # the interrupted ones waited for their reservation (2 s) to expire
    assert time.time() - killed_at >= 1.0
    await eventually(lambda: harness.redis.zcard(keys.reserved), _none, what="all acked")
    assert await harness.redis.llen(keys.list) == 0
    assert await harness.failed() == []
    second.send_signal(signal.SIGTERM)
    assert second.wait(10) == 0


async def _stopped_mid_run(
    harness: Harness, proc: subprocess.Popen[bytes], k: dict[str, str]
) -> set[int]:
    """Freeze the worker; the jobs it holds that never finished a run (empty: it is between
    two batches, all it ran is done and the next not taken yet; then it runs on)."""
    proc.send_signal(signal.SIGSTOP)
    await asyncio.to_thread(os.waitpid, proc.pid, os.WUNTRACED)  # returns once stopped
    await harness.redis.ping()  # what it sent before it stopped has been applied
    reserved = await harness.redis.zrange(harness.keys("q").reserved, 0, -1)
    ran = {int(n) for n in await harness.redis.hkeys(k["runs"])}
    held = {json.loads(m)["data"]["n"] for m in reserved} - ran
    if not held:
        proc.send_signal(signal.SIGCONT)
    return held


async def test_sigterm_lets_running_jobs_finish_and_takes_no_more(harness: Harness) -> None:
    k = {name: harness.key(name) for name in ("started", "done", "runs")}
    for n in range(2):
        await harness.push("q", "work", {"n": n, "seconds": 1.0, **k})
    worker = harness.spawn("--queue", "q", "--concurrency", "2", "--grace", "10", *FAST[:2])
    await eventually(lambda: harness.redis.scard(k["started"]), lambda c: c == 2, what="started")
    worker.send_signal(signal.SIGTERM)
    await harness.push("q", "work", {"n": 2, "seconds": 0, **k})

    assert await asyncio.to_thread(worker.wait, 10) == 0, harness.output(worker)
    assert {int(n) for n in await harness.redis.smembers(k["done"])} == {0, 1}
    keys = harness.keys("q")
    assert await harness.redis.zcard(keys.reserved) == 0
    assert await harness.redis.llen(keys.list) == 1  # the late job is still waiting


async def test_sigterm_leaves_a_job_running_past_grace_reserved(harness: Harness) -> None:
    k = {name: harness.key(name) for name in ("started", "done", "runs")}
    await harness.push("q", "work", {"n": 0, "seconds": 30, **k})
    worker = harness.spawn(
        "--queue", "q", "--grace", "0.5", "--timeout", "60", "--metrics-port", "0"
    )
    await eventually(lambda: harness.redis.scard(k["started"]), what="started")
    stopped = time.monotonic()
    worker.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(worker.wait, 10) == 0
    assert time.monotonic() - stopped < 5
    assert await harness.redis.scard(k["done"]) == 0
    [reserved] = await harness.redis.zrange(harness.keys("q").reserved, 0, -1)
    assert json.loads(reserved)["data"]["n"] == 0


async def test_pacing_holds_across_two_processes(harness: Harness) -> None:
    harness.workers["min_send_interval"] = {"camp": 1.0}
    log = harness.key("log")
    for probe in ("p1", "p2"):
        harness.spawn("--queue", f"camp,{probe}", "--concurrency", "1", *FAST)
        await harness.push(probe, "record", {"log": harness.key(probe)})
    for probe in ("p1", "p2"):  # both processes are up and idle
        await eventually(lambda p=probe: harness.redis.llen(harness.key(p)), what=probe)
    for n, session in enumerate(["A", "A", "A", "B"]):
        await harness.push("camp", "record", {"log": log, "n": n, "session_id": session})

    entries = await eventually(harness.log, lambda e: len(e) == 4, timeout=15, what="4 sends")
    sends = sorted(entries, key=lambda e: e["t"])
    a_times = [e["t"] for e in sends if e["session"] == "A"]
    assert all(b - a >= 0.95 for a, b in itertools.pairwise(a_times)), a_times
    [b_time] = [e["t"] for e in sends if e["session"] == "B"]
    assert b_time - a_times[0] < 0.5  # B is not held up by A
    assert [e["attempt"] for e in sends] == [1, 1, 1, 1]  # waiting is not an attempt


async def test_metrics_endpoint(harness: Harness) -> None:
    port = free_port()
    await harness.push("q", "record", {"log": harness.key("log")})
    await harness.push("q", "no.such.job", {})
    harness.spawn("--queue", "q", "--metrics-port", str(port))

    async def scrape() -> str:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{port}/metrics") as resp,
            ):
                text = await resp.text()
        except aiohttp.ClientError:
            return ""
        # the two jobs run concurrently: wait for both outcomes, in either order
        return text if 'outcome="failed"' in text and 'outcome="done"' in text else ""

    text = await eventually(scrape, what="metrics")
    assert 'workers_jobs_total{outcome="done",queue="q"} 1.0' in text
    assert 'workers_jobs_total{outcome="failed",queue="q"} 1.0' in text
    assert 'workers_job_duration_seconds_count{queue="q"} 1.0' in text
    assert "workers_jobs_in_flight 0.0" in text
    assert 'workers_queue_jobs{queue="q",state="waiting"}' in text
    assert 'workers_queue_oldest_waiting_seconds{queue="q"}' in text
    # on loopback only by default: another local address of the host is refused
    with pytest.raises(aiohttp.ClientConnectionError):
        async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.2:{port}/metrics"):
            pass


async def test_metrics_listen_where_metrics_host_says(harness: Harness) -> None:
    port = free_port()
    harness.spawn("--queue", "q", "--metrics-port", str(port), "--metrics-host", "0.0.0.0")

    async def answers() -> bool:
        try:
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.2:{port}/metrics") as resp,
            ):
                return resp.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(answers, what="metrics on every interface")
