"""Failures the backend must not see: crashed instances, moved sessions, Redis going away."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import time

import aiohttp
import redis.asyncio as aioredis
from aiohttp import web

from dev.ports import free_port
from tests.harness import API_KEY, eventually, sample, serve, spawn, wait_healthy


async def create(http: aiohttp.ClientSession, gw: str, sid: str) -> str:
    async with http.post(f"{gw}/api/sessions", json={"session_id": sid, "api_key": API_KEY}) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-WhatsApp-Instance"]


async def restore_directly(http: aiohttp.ClientSession, instance: str, sid: str) -> None:
    """What an instance does after a restart: bring a persisted session back on itself."""
    async with http.post(f"{instance}/api/sessions/{sid}/restore", json={"api_key": API_KEY}) as r:
        assert r.status == 200, await r.text()


async def delete_directly(http: aiohttp.ClientSession, instance: str, sid: str) -> None:
    async with http.delete(f"{instance}/api/sessions/{sid}", json={"api_key": API_KEY}) as r:
        assert r.status == 200


def start_simulators(count: int) -> tuple[list[subprocess.Popen[bytes]], list[str]]:
    ports = [free_port() for _ in range(count)]
    procs = [
        spawn("dev.simulator", "--port", str(p), "--api-key", API_KEY, "--connect-delay", "0")
        for p in ports
    ]
    return procs, [f"http://127.0.0.1:{p}" for p in ports]


async def test_killed_instance_while_requests_flow_no_request_fails(gateways, http):
    procs, urls = start_simulators(3)
    try:
        for url in urls:
            await wait_healthy(http, url)
        gw = await gateways(urls, health_interval=0.5)
        owners = {f"k-{i}": await create(http, gw.url, f"k-{i}") for i in range(9)}
        victims = [sid for sid, url in owners.items() if url == urls[1]]
        assert len(victims) == 3
        reads_failed: list[tuple[str, int, str]] = []
        sends_failed: list[tuple[str, bool, str]] = []
        stop = asyncio.Event()
        killed = asyncio.Event()
        served_after_kill: dict[str, int] = dict.fromkeys(owners, 0)

        async def reads(sid: str) -> None:
            while not stop.is_set():
                async with http.get(f"{gw.url}/api/sessions/{sid}/status?api_key={API_KEY}") as r:
                    if r.status != 200:
                        reads_failed.append((sid, r.status, await r.text()))
                    elif killed.is_set():
                        served_after_kill[sid] += 1

        async def sends(sid: str) -> None:
            send = {"session_id": sid, "api_key": API_KEY, "recipient_phone": "1", "message": "m"}
            while not stop.is_set():
                before_kill = not killed.is_set()
                async with http.post(f"{gw.url}/api/messages/send", json=send) as r:
                    if r.status != 200:
                        sends_failed.append((sid, before_kill, (await r.json())["kind"]))

        flows = [asyncio.create_task(f(sid)) for sid in owners for f in (reads, sends)]
        for i, sid in enumerate(victims):  # its sessions come back on the others...
            await restore_directly(http, urls[0 if i % 2 else 2], sid)
        procs[1].send_signal(signal.SIGKILL)  # ...and the instance dies mid-traffic
        procs[1].wait()
        killed.set()

        async def everyone_served() -> bool:
            return all(n >= 5 for n in served_after_kill.values())

        await eventually(everyone_served, timeout=15)
        stop.set()
        await asyncio.gather(*flows)
        assert reads_failed == []
        # a send the instance was handling when it died may have gone out: it is answered
        # 502, not sent twice; every send made after the crash succeeded
        assert all(before and kind == "reset" for _, before, kind in sends_failed)
        assert len(sends_failed) <= len(victims)
        for sid in victims:
            assert gw.gw.pins.sessions[sid] in (urls[0], urls[2])

        async def marked_down() -> bool:
            return not gw.gw.fleet.get(urls[1]).up  # type: ignore[union-attr]

        await eventually(marked_down, timeout=2)
        assert sample(gw, "gateway_rediscoveries_total", result="found") == 3
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


async def test_fifty_concurrent_requests_for_a_moved_session_search_once(
    simulators, gateways, http
):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims])
    first = await create(http, gw.url, "moved-1")
    target = next(s.url for s in sims if s.url != first)
    await restore_directly(http, target, "moved-1")
    await delete_directly(http, first, "moved-1")

    async def status() -> tuple[int, str]:
        async with http.get(f"{gw.url}/api/sessions/moved-1/status?api_key={API_KEY}") as r:
            return r.status, r.headers.get("X-WhatsApp-Instance", "")

    answers = await asyncio.gather(*(status() for _ in range(50)))
    assert answers == [(200, target)] * 50
    assert sample(gw, "gateway_rediscoveries_total", result="found") == 1
    assert gw.gw.pins.sessions["moved-1"] == target


async def test_a_session_on_no_instance_is_a_404_or_503(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    async with http.get(f"{gw.url}/api/sessions/ghost/status?api_key={API_KEY}") as r:
        assert r.status == 404  # an instance's own answer
        assert await r.json() == {"error": "Session not found"}
    owner = await create(http, gw.url, "lost-1")
    holder = next(s for s in sims if s.url == owner)
    await holder.runner.cleanup()  # its instance goes away, and the session with it
    async with http.get(f"{gw.url}/api/sessions/lost-1/status?api_key={API_KEY}") as r:
        assert r.status == 503
        assert (await r.json())["instance"] == owner


async def test_refused_connection_marks_the_instance_down_at_once(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])  # checks every 60 s: only passive ones count
    owner = await create(http, gw.url, "p-1")
    holder = next(s for s in sims if s.url == owner)
    await holder.runner.cleanup()
    async with http.get(f"{gw.url}/api/sessions/p-1/status?api_key={API_KEY}"):
        pass

    async def down() -> bool:
        return not gw.gw.fleet.get(owner).up  # type: ignore[union-attr]

    await eventually(down, timeout=2)
    # new sessions avoid it
    assert await create(http, gw.url, "p-2") != owner


async def test_instance_comes_back_after_rise_checks(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], health_interval=0.1, health_fall=2, health_rise=2)
    await sims[1].runner.cleanup()
    instance = gw.gw.fleet.get(sims[1].url)
    assert instance is not None

    async def is_down() -> bool:
        return not instance.up

    await eventually(is_down, timeout=3)
    port = int(sims[1].url.rsplit(":", 1)[1])
    runner, _ = await serve(sims[1].app, port)
    try:

        async def is_up() -> bool:
            return instance.up

        await eventually(is_up, timeout=3)
        assert (
            sample(gw, "gateway_instance_state_changes_total", upstream=sims[1].url, state="up")
            == 1
        )
    finally:
        await runner.cleanup()


async def test_restore_of_a_session_whose_instance_is_down_waits_for_it(simulators, gateways, http):
    """The session may still live on the instance that is down: restoring it elsewhere would
    make two copies once it is back. It is restored where it is pinned, once that answers."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    owner = await create(http, gw.url, "r-1")
    holder = next(s for s in sims if s.url == owner)
    other = next(s for s in sims if s.url != owner)
    await holder.runner.cleanup()
    gw.gw.fleet.get(owner).up = False  # type: ignore[union-attr]
    async with http.post(f"{gw.url}/api/sessions/r-1/restore", json={"api_key": API_KEY}) as r:
        assert r.status == 503 and r.headers["X-Gateway-Outcome"] == "not-sent"
        assert (await r.json())["instances"] == [owner]
    assert "r-1" not in other.sessions and gw.gw.pins.sessions["r-1"] == owner

    [back] = await simulators(1, ports=[int(owner.rsplit(":", 1)[1])])  # restarted, empty
    gw.gw.fleet.get(owner).up = True  # type: ignore[union-attr]
    async with http.post(f"{gw.url}/api/sessions/r-1/restore", json={"api_key": API_KEY}) as r:
        assert r.status == 200 and r.headers["X-WhatsApp-Instance"] == owner
    assert "r-1" in back.sessions and "r-1" not in other.sessions
    assert gw.gw.pins.sessions["r-1"] == owner


async def test_a_timeout_after_sending_is_not_replayed(simulators, gateways, http):
    sims = await simulators(1)
    received: list[str] = []
    release = asyncio.Event()

    async def slow_send(request: web.Request) -> web.Response:
        received.append(request.path)
        await release.wait()
        return web.json_response({"success": True})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "healthy", "sessions": {"total": 1}})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_post("/api/messages/send", slow_send)
    runner, slow = await serve(app)
    try:
        gw = await gateways([slow, sims[0].url], read_timeout=0.3)
        await gw.gw.pins.pin_session("slow-1", slow, source="admin")
        # the session also exists elsewhere: a replay would have somewhere to go
        await restore_directly(http, sims[0].url, "slow-1")
        send = {"session_id": "slow-1", "api_key": API_KEY, "recipient_phone": "1", "message": "m"}
        async with http.post(f"{gw.url}/api/messages/send", json=send) as r:
            assert r.status == 504
            body = await r.json()
        assert body["instance"] == slow and body["kind"] == "timeout"
        assert received == ["/api/messages/send"]
        assert sims[0].sessions["slow-1"].messages_sent == 0
        assert sample(gw, "gateway_replays_total", upstream=sims[0].url) is None
    finally:
        release.set()
        await runner.cleanup()


async def test_redis_outage_keeps_known_sessions_routing(simulators, gateways, http, own_redis):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], redis_url=own_redis.url, redis_timeout=0.2)
    owners = {f"o-{i}": await create(http, gw.url, f"o-{i}") for i in range(4)}
    own_redis.stop()

    started = time.monotonic()
    for sid, owner in owners.items():
        async with http.get(f"{gw.url}/api/sessions/{sid}/status?api_key={API_KEY}") as r:
            assert r.status == 200 and r.headers["X-WhatsApp-Instance"] == owner
    assert time.monotonic() - started < 4 * 0.2 + 1  # nobody waits long on a dead Redis
    # new sessions are still placed, with the process's own counts
    placed = {f"n-{i}": await create(http, gw.url, f"n-{i}") for i in range(2)}
    assert sorted(placed.values()) == sorted(s.url for s in sims)
    async with http.get(f"{gw.url}/health") as r:
        assert (await r.json())["redis"] == "down"
    assert sample(gw, "gateway_redis_up") == 0

    own_redis.start()
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:

        async def written_back() -> bool:
            stored = await client.hgetall(f"{gw.gw.settings.key_prefix}sessions")
            return stored == {**owners, **placed}  # it came back empty: all is written again

        await eventually(written_back, timeout=5)
    finally:
        await client.aclose()
    assert sample(gw, "gateway_redis_up") == 1
