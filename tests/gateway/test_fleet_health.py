"""``GET /health`` answers from the instances as they are now, and instances that boot after
the gateway are in service within seconds of answering."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from dev.ports import free_port
from dev.simulator import SimulatorConfig
from dev.simulator import create_app as create_simulator
from gateway.shared.settings import Settings
from tests.harness import API_KEY, RunningGateway, eventually, serve
from tests.support import instance_up, stand_in

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def test_health_counts_what_the_instances_hold_right_now(simulators, gateways, http):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims])
    for i in range(7):
        async with http.post(
            f"{gw.url}/api/sessions", json={"session_id": f"now-{i}", "api_key": API_KEY}
        ) as r:
            assert r.status == 200
    async with http.get(f"{gw.url}/health") as r:
        health = await r.json()
    async with http.get(f"{gw.url}/api/sessions", params={"api_key": API_KEY}) as r:
        listed = await r.json()
    assert health["sessions"]["total"] == listed["total"] == 7
    assert health["sessions"]["connected"] + health["sessions"]["disconnected"] == 7
    assert [i["active"] for i in health["instances"]] == [3, 2, 2]


async def test_health_sums_the_instances_own_reports_memory_included(gateways, http, teardown):
    standins = [await stand_in(teardown) for _ in range(2)]
    gw = await gateways([s.url for s in standins])
    for standin, (total, used) in zip(standins, [(5, 180), (7, 220)], strict=True):
        standin.health.update(
            sessions={"total": total, "connected": total - 1, "disconnected": 1},
            memory={"used": used, "total": 512, "unit": "MB"},
        )
    async with http.get(f"{gw.url}/health") as r:
        health = await r.json()
    assert health["status"] == "healthy"
    assert health["sessions"] == {"total": 12, "connected": 10, "disconnected": 2}
    assert health["memory"] == {"used": 400, "total": 1024, "unit": "MB"}


async def test_instances_are_in_service_soon_after_a_boot(simulators, gateways, http):
    """The gateway starts first (a reboot); the instances answer a moment later."""
    ports = [free_port(), free_port()]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    gw = await gateways(urls, health_interval=5.0, health_down_interval=0.5, health_rise=2)
    assert not await instance_up(http, gw.url, urls[0])
    await simulators(ports=ports)
    answering = time.monotonic()

    async def all_up() -> bool:
        return all([await instance_up(http, gw.url, url) for url in urls])

    await eventually(all_up, timeout=4.5)  # health_rise checks, health_down_interval apart
    assert time.monotonic() - answering < 4.5  # < health_interval: not the up cadence
    assert Settings().health_down_interval <= 1
    async with http.post(
        f"{gw.url}/api/sessions", json={"session_id": "boot-1", "api_key": API_KEY}
    ) as r:
        assert r.status == 200


async def test_health_right_after_a_create_or_delete_counts_it(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])

    async def total() -> int:
        async with http.get(f"{gw.url}/health") as r:
            return (await r.json())["sessions"]["total"]

    assert await total() == 0
    body = {"session_id": "fresh-1", "api_key": API_KEY}
    async with http.post(f"{gw.url}/api/sessions", json=body) as r:
        assert r.status == 200
    assert await total() == 1  # not the answer of a moment ago
    async with http.delete(f"{gw.url}/api/sessions/fresh-1", json={"api_key": API_KEY}) as r:
        assert r.status == 200
    assert await total() == 0


async def total_sessions(http: aiohttp.ClientSession, gw: RunningGateway) -> int:
    async with http.get(f"{gw.url}/health") as r:
        return (await r.json())["sessions"]["total"]


async def test_health_asked_while_a_create_is_under_way_is_not_reused(gateways, http, teardown):
    """A round of asking the instances that started before this gateway placed a session is
    neither joined by a later call nor kept for the next one."""
    port = free_port()
    sim = create_simulator(
        SimulatorConfig(api_key=API_KEY, connect_delay=0, public_url=f"http://127.0.0.1:{port}")
    )
    holding, held, release = asyncio.Event(), asyncio.Event(), asyncio.Event()

    @web.middleware
    async def hold_one_health(request: web.Request, handler: Handler) -> web.StreamResponse:
        response = await handler(request)  # what the instance holds when asked
        if request.path == "/health" and holding.is_set() and not held.is_set():
            held.set()
            await release.wait()
        return response

    sim.middlewares.insert(0, hold_one_health)
    runner, url = await serve(sim, port)
    teardown.push_async_callback(runner.cleanup)
    gw = await gateways([url])
    (instance,) = gw.gw.fleet.instances

    async def checked_up() -> bool:  # by its health checks, not a /health of the fleet yet
        return instance.up

    await eventually(checked_up)
    holding.set()
    before = asyncio.create_task(total_sessions(http, gw))
    try:
        await asyncio.wait_for(held.wait(), 5)  # the gateway's round is at the instance
        body = {"session_id": "racing-1", "api_key": API_KEY}
        async with http.post(f"{gw.url}/api/sessions", json=body) as r:
            assert r.status == 200
        after = total_sessions(http, gw)
        assert await asyncio.wait_for(after, 5) == 1  # not the round asked before the create
    finally:
        release.set()
    assert await before == 0  # asked before: right for its moment
    assert await total_sessions(http, gw) == 1  # and that stale round was not kept


async def test_health_counts_a_session_made_again_where_its_pin_says(simulators, gateways, http):
    """A create that moves no pin (the instance lost the session, the pin stayed) counts too."""
    (sim,) = await simulators(1)
    gw = await gateways([sim.url])
    body = {"session_id": "again-1", "api_key": API_KEY}
    async with http.post(f"{gw.url}/api/sessions", json=body) as r:
        assert r.status == 200
    del sim.sessions["again-1"]  # e.g. restarted without restoring it

    async def gone() -> bool:
        return await total_sessions(http, gw) == 0

    await eventually(gone)  # an answer now known to say 0
    async with http.post(f"{gw.url}/api/sessions", json=body) as r:
        assert r.status == 200 and r.headers["X-WhatsApp-Instance"] == sim.url
    assert await total_sessions(http, gw) == 1


async def test_health_of_another_gateway_process_counts_a_create_or_delete_at_once(
    simulators, gateways, http
):
    """Two processes of one gateway (one Redis prefix): a session created or deleted through
    one shows in the other's /health as soon as its memory has the pin, not a second late."""
    (sim,) = await simulators(1)
    first, second = await gateways([sim.url]), await gateways([sim.url])
    assert await total_sessions(http, second) == 0  # an answer the second one keeps

    async def followed(present: bool) -> bool:
        return ("other-1" in second.gw.pins.sessions) is present

    body = {"session_id": "other-1", "api_key": API_KEY}
    async with http.post(f"{first.url}/api/sessions", json=body) as r:
        assert r.status == 200
    await eventually(lambda: followed(True))
    assert await total_sessions(http, second) == 1
    async with http.delete(f"{first.url}/api/sessions/other-1", json={"api_key": API_KEY}) as r:
        assert r.status == 200
    await eventually(lambda: followed(False))
    assert await total_sessions(http, second) == 0


async def test_health_checks_never_wait_behind_proxied_calls(gateways, http, teardown):
    """Every connection of the capped pool busy with a slow call: the instance is still
    checked at once, and stays up."""
    entered, release = asyncio.Semaphore(0), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.release()
        await release.wait()
        return web.json_response({"success": True})

    stand = await stand_in(teardown, answer=slow)
    gw = await gateways([stand.url], max_connections_per_instance=4, health_timeout=1.0)
    calls = [asyncio.create_task(http.get(f"{gw.url}/info?n={n}")) for n in range(5)]
    try:
        for _ in range(4):
            await asyncio.wait_for(entered.acquire(), 5)  # all four connections in use
        (instance,) = gw.gw.fleet.instances
        for _ in range(3):  # more than health_fall checks in a row
            assert await gw.gw.health.check(instance), "a busy instance was checked down"
        assert instance.up and await instance_up(http, gw.url, stand.url)
    finally:
        release.set()
        for response in await asyncio.gather(*calls):
            assert response.status == 200
            response.release()
