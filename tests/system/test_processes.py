"""``python -m gateway --processes N``: children on one port, kept alive and signalled.

Every test runs the real command against simulators on loopback ports and reads the
processes' JSON logs (``--log-format json``) to know which child answered.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest

from dev.ports import free_port
from tests.harness import API_KEY, REDIS_URL, Sim, eventually, wait_healthy
from tests.spawned import Spawned, alive, children_pids, clean_env
from tests.support import raw_http

pytestmark = pytest.mark.timeout(90)

Start = Callable[..., Awaitable[tuple[Spawned, str]]]


@pytest.fixture
async def start_gateway(redis_prefix: str) -> AsyncIterator[Start]:
    """``python -m gateway --log-format json ARGS`` in front of the given instances."""
    runs: list[Spawned] = []

    async def start(sims: list[Sim], *args: str, **env: str) -> tuple[Spawned, str]:
        port = free_port()
        environ = clean_env(
            WHATSAPP_INSTANCES=",".join(s.url for s in sims),
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=redis_prefix,
            LARAVEL_API_TOKEN=API_KEY,
            GATEWAY_PORT=str(port),
            GATEWAY_HEALTH_INTERVAL="60",
            GATEWAY_RECONCILE_INTERVAL="60",
            **env,
        )
        run = await Spawned.start("gateway", "--log-format", "json", *args, env=environ)
        runs.append(run)
        url = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, url, timeout=30)
        if "--processes" in args:  # every child listens, not just the first
            await run.logged(lambda _: bool(children_pids(run)), timeout=30)
        return run, url

    yield start
    for run in runs:
        await run.stop()


async def create(http: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, str]:
    body = {"session_id": sid, "api_key": API_KEY}
    async with http.post(f"{url}/api/sessions", json=body) as resp:
        return resp.status, resp.headers.get("X-WhatsApp-Instance", "")


def served_by(run: Spawned, route: str) -> Counter[int]:
    """Access-log lines of ``route`` per child pid."""
    return Counter(r["pid"] for r in run.matching(logger="gateway.access", route=route))


async def test_placement_stays_atomic_across_two_processes(
    simulators: Callable[..., Awaitable[list[Sim]]], start_gateway: Start
) -> None:
    sims = await simulators(4)
    run, url = await start_gateway(sims, "--processes", "2")
    assert len(children_pids(run)) == 2

    # One connection per request, so the kernel spreads them over both children.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        results = await asyncio.gather(*(create(http, url, f"mp-{i}") for i in range(200)))

    assert {status for status, _ in results} == {200}
    counts = [len(s.sessions) for s in sims]
    assert sum(counts) == 200 and max(counts) - min(counts) <= 1, counts
    assert Counter(owner for _, owner in results) == {s.url: len(s.sessions) for s in sims}
    await run.logged(lambda _: sum(served_by(run, "/api/sessions").values()) == 200)
    assert set(served_by(run, "/api/sessions")) == set(children_pids(run))

    # What aiohttp's parser refuses gets the gateway's JSON 400 in every child, quietly.
    for _ in range(20):
        reply = await raw_http(url, "secret")
        assert reply.status == 400 and reply.json()["success"] is False, reply
    assert "Traceback" not in run.output and not run.matching(level="ERROR")


async def test_the_limit_holds_across_processes(
    simulators: Callable[..., Awaitable[list[Sim]]], start_gateway: Start
) -> None:
    sims = await simulators(4)
    _, url = await start_gateway(sims, "--processes", "2", WHATSAPP_MAX_SESSIONS_PER_INSTANCE="3")
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as http:
        results = await asyncio.gather(*(create(http, url, f"lim-{i}") for i in range(20)))

    assert Counter(status for status, _ in results) == {200: 12, 503: 8}
    assert [len(s.sessions) for s in sims] == [3, 3, 3, 3]


async def test_a_dead_child_is_replaced_and_sigterm_stops_them_all(
    simulators: Callable[..., Awaitable[list[Sim]]],
    start_gateway: Start,
    http: aiohttp.ClientSession,
) -> None:
    sims = await simulators(2)
    run, url = await start_gateway(sims, "--processes", "2")
    first, second = children_pids(run)

    os.kill(first, signal.SIGKILL)

    def replaced(records: list[dict]) -> bool:
        return any("starting another" in r["message"] for r in records) and (
            sum("gateway on" in r["message"] for r in records) == 3
        )

    await run.logged(replaced)
    newest = [r["pid"] for r in run.records() if "gateway on" in r["message"]][-1]
    assert newest not in (first, second) and alive(newest) and alive(second)
    assert (await create(http, url, "after-replace"))[0] == 200

    assert await run.stop() == 0
    await eventually(lambda: _none_alive(second, newest), timeout=10)


async def _none_alive(*pids: int) -> bool:
    return not any(alive(p) for p in pids)


async def test_children_stop_when_the_parent_is_killed(
    simulators: Callable[..., Awaitable[list[Sim]]], start_gateway: Start
) -> None:
    sims = await simulators(1)
    run, _ = await start_gateway(sims, "--processes", "2")
    pids = children_pids(run)

    run.signal(signal.SIGKILL)
    await run.proc.wait()

    await eventually(lambda: _none_alive(*pids), timeout=15)


async def test_sigusr2_replaces_every_child_without_refusing_a_request(
    simulators: Callable[..., Awaitable[list[Sim]]],
    start_gateway: Start,
    http: aiohttp.ClientSession,
) -> None:
    sims = await simulators(2)
    run, url = await start_gateway(sims, "--processes", "2")
    old = set(children_pids(run))
    assert (await create(http, url, "roll-1"))[0] == 200
    statuses: Counter[int | str] = Counter()
    done = asyncio.Event()

    async def traffic() -> None:
        status_url = f"{url}/api/sessions/roll-1/status?api_key={API_KEY}"
        connector = aiohttp.TCPConnector(force_close=True)  # a new connection each time
        async with aiohttp.ClientSession(connector=connector) as fresh:
            while not done.is_set():
                try:
                    async with fresh.get(status_url) as resp:
                        statuses[resp.status] += 1
                except aiohttp.ClientError as exc:
                    statuses[type(exc).__name__] += 1

    loops = [asyncio.create_task(traffic()) for _ in range(4)]
    run.signal(signal.SIGUSR2)
    await run.logged(lambda rs: any("rolling restart done" in r["message"] for r in rs), 30)
    done.set()
    await asyncio.gather(*loops)

    assert set(statuses) == {200}, statuses
    assert statuses[200] > 20
    now = {r["pid"] for r in run.records() if "gateway on" in r["message"]} - old
    assert len(now) == 2 and all(alive(p) for p in now)
    await eventually(lambda: _none_alive(*old), timeout=10)
