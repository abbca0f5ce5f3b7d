"""What the gateway says about a session is what the instances say: one instance per session,
no "Session not found" it cannot prove, no state changed without an instance's word."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp

from dev.ports import free_port
from tests.harness import API_KEY, peak_overlap
from tests.support import (
    ADMIN_TOKEN,
    RawInstance,
    RawRequest,
    metric,
    pin,
    pinned,
)


async def create(http: aiohttp.ClientSession, gw: str, sid: str, **body: Any) -> tuple[int, str]:
    async with http.post(
        f"{gw}/api/sessions", json={"session_id": sid, "api_key": API_KEY, **body}
    ) as r:
        await r.read()
        return r.status, r.headers.get("X-WhatsApp-Instance", "")


async def status(
    http: aiohttp.ClientSession, gw: str, sid: str, key: str = API_KEY
) -> tuple[int, Any, Any]:
    async with http.get(f"{gw}/api/sessions/{sid}/status", params={"api_key": key}) as r:
        return r.status, await r.json(), r.headers


# --- one session, one instance --------------------------------------------------------------


async def test_concurrent_creates_through_two_processes_land_on_one_instance(
    simulators, gateways, http
):
    """A Laravel retry racing its own slow create: one placement, the others follow it."""
    sims = await simulators(4, latency=0.3)
    urls = [s.url for s in sims]
    first, second = await gateways(urls), await gateways(urls)
    answers = await asyncio.gather(
        *(create(http, gw.url, "dup-1") for gw in (first, second, first, second))
    )
    assert [code for code, _ in answers] == [200] * 4, answers
    assert len({owner for _, owner in answers}) == 1, answers
    assert [s.url for s in sims if "dup-1" in s.sessions] == [answers[0][1]]
    # later creates of the pinned session go where it lives
    assert await create(http, second.url, "dup-1") == (200, answers[0][1])


async def test_concurrent_creates_in_one_process_single_flight_without_redis(
    simulators, gateways, http, own_redis
):
    sims = await simulators(3, latency=0.2)
    gw = await gateways([s.url for s in sims], redis_url=own_redis.url, redis_timeout=0.2)
    own_redis.stop()
    answers = await asyncio.gather(*(create(http, gw.url, "dup-2") for _ in range(4)))
    assert [code for code, _ in answers] == [200] * 4, answers
    assert len({owner for _, owner in answers}) == 1, answers
    assert sum("dup-2" in s.sessions for s in sims) == 1


# --- "Session not found" only when every possible holder said so ---------------------------


async def test_a_read_cut_by_resets_still_asks_the_pinned_instance(
    simulators, gateways, http, teardown
):
    """Resets on the session's own instance do not make it 'not found' elsewhere."""
    cuts = 0

    def flaky(request: RawRequest) -> tuple[int, dict[str, Any]] | None:
        nonlocal cuts
        if request.target.startswith("/api/sessions/cut-1/status") and cuts < 2:
            cuts += 1
            return None  # reset, before any answer
        return 200, {"session_id": "cut-1", "status": "connected"}

    holder = await RawInstance(flaky).start(teardown)
    sims = await simulators(1)
    gw = await gateways([holder.url, sims[0].url], admin_token=ADMIN_TOKEN)
    await pin(http, gw.url, "cut-1", holder.url)
    code, body, headers = await status(http, gw.url, "cut-1")
    assert code == 200, body
    assert headers["X-WhatsApp-Instance"] == holder.url
    assert await pinned(http, gw.url, "cut-1") == holder.url


async def test_no_instance_up_is_503_never_not_found(gateways, http):
    dead = [f"http://127.0.0.1:{free_port()}" for _ in range(2)]
    gw = await gateways(dead)
    code, body, headers = await status(http, gw.url, "ghost")
    assert code == 503, body
    assert headers["X-Gateway-Outcome"] == "not-sent" and body["outcome"] == "not-sent"
    async with http.get(f"{gw.url}/api/sessions", params={"api_key": API_KEY}) as r:
        assert r.status == 503, await r.text()
        assert (await r.json())["instances_unavailable"] == dead


async def test_a_session_on_no_instance_gets_the_instances_own_answer(simulators, gateways, http):
    """Exactly what an instance says: its 404, or its 401 for a wrong key."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    async with http.get(
        f"{sims[0].url}/api/sessions/ghost/status", params={"api_key": API_KEY}
    ) as r:
        direct = r.status, await r.read()
    async with http.get(f"{gw.url}/api/sessions/ghost/status", params={"api_key": API_KEY}) as r:
        assert (r.status, await r.read()) == direct
        assert r.headers["X-WhatsApp-Instance"] in (sims[0].url, sims[1].url)
    code, body, _ = await status(http, gw.url, "ghost", key="wrong")
    assert (code, body) == (401, {"error": "Invalid API key"})
    send = {"session_id": "ghost", "api_key": API_KEY, "recipient_phone": "1", "message": "m"}
    async with http.post(f"{gw.url}/api/messages/send", json=send) as r:
        assert (r.status, await r.json()) == (404, {"error": "Session not found"})


async def test_a_possible_holder_that_is_down_makes_it_503_naming_it(simulators, gateways, http):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims], health_timeout=0.5)
    await sims[2].runner.cleanup()
    code, body, headers = await status(http, gw.url, "ghost")  # refused by sims[2]
    assert code == 503, body
    assert sims[2].url in body["instances"] and headers["X-Gateway-Outcome"] == "not-sent"
    # and a pinned session that its instance no longer holds: the same
    assert (await create(http, gw.url, "lost-1"))[0] == 200
    for sim in sims[:2]:
        sim.sessions.pop("lost-1", None)
    code, body, _ = await status(http, gw.url, "lost-1")
    assert code == 503 and sims[2].url in body["instances"], body


# --- nothing changes without an instance's word ---------------------------------------------


async def test_a_delete_for_a_session_on_a_down_instance_keeps_its_pin(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=ADMIN_TOKEN)
    _, owner = await create(http, gw.url, "del-1")
    holder = next(s for s in sims if s.url == owner)
    other = next(s for s in sims if s.url != owner)
    await holder.runner.cleanup()
    async with http.delete(f"{gw.url}/api/sessions/del-1", json={"api_key": API_KEY}) as r:
        assert r.status == 503, await r.text()
        assert r.headers["X-Gateway-Outcome"] == "not-sent"
    assert await pinned(http, gw.url, "del-1") == owner
    assert other.calls("/api/sessions/del-1") == []


async def test_a_request_naming_an_unknown_workspace_writes_no_pin(
    simulators, gateways, http, redis_client, redis_prefix
):
    sims = await simulators(4)
    gw = await gateways([s.url for s in sims])
    for ws in range(100, 140):
        async with http.get(f"{gw.url}/info", params={"workspace_id": str(ws)}) as r:
            assert r.headers["X-WhatsApp-Instance"] == sims[ws % 4].url  # sharded
    workspaces = f"{redis_prefix}wa-gateway:workspaces"
    assert await redis_client.hlen(workspaces) == 0
    # a session placed for a workspace does pin it
    _, owner = await create(http, gw.url, "ws-1", workspace_id=101)
    assert await redis_client.hget(workspaces, "101") == owner


async def test_a_session_found_nowhere_is_not_searched_again_for_a_while(
    simulators, gateways, http
):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims])

    def searches() -> int:
        return sum(len(s.calls("/api/sessions/nowhere/status")) for s in sims)

    assert (await status(http, gw.url, "nowhere"))[0] == 404
    first = searches()
    assert first == 4  # every instance was asked, then one answered the call itself
    for _ in range(5):
        assert (await status(http, gw.url, "nowhere"))[0] == 404
    assert searches() == first + 5  # only the calls themselves, no new search
    assert await metric(http, gw.url, "gateway_rediscoveries_total", result="not_found") == 1
    # a create says otherwise
    assert (await create(http, gw.url, "nowhere"))[0] == 200
    assert (await status(http, gw.url, "nowhere"))[0] == 200


async def test_searches_are_capped_per_process(simulators, gateways, http):
    sims = await simulators(2, latency=0.2)
    gw = await gateways([s.url for s in sims], rediscovery_concurrency=2)

    async def validate(sid: str) -> int:
        async with http.get(f"{gw.url}/api/messages/{sid}/validate?api_key={API_KEY}") as r:
            return r.status

    answers = await asyncio.gather(*(validate(f"unknown-{i}") for i in range(8)))
    assert answers == [404] * 8
    for sim in sims:
        searched = [s for s in sim.seen if s.path_qs.startswith("/api/sessions/unknown-")]
        assert len(searched) == 8
        assert peak_overlap(searched) <= 2


async def test_the_search_carries_the_callers_key(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], laravel_api_token="the-gateways-own-key")
    assert (await create(http, gw.url, "mine"))[0] == 200
    owner = next(s for s in sims if "mine" in s.sessions)
    other = next(s for s in sims if s is not owner)
    other.sessions["mine"] = owner.sessions.pop("mine")  # moved behind the gateway's back
    # a caller with a wrong key learns nothing: not where it is, not that it exists
    code, body, headers = await status(http, gw.url, "mine", key="wrong")
    assert (code, body) == (401, {"error": "Invalid API key"})
    code, body, _ = await status(http, gw.url, "elsewhere", key="wrong")
    assert (code, body) == (401, {"error": "Invalid API key"})
    code, body, headers = await status(http, gw.url, "mine")
    assert code == 200 and headers["X-WhatsApp-Instance"] == other.url
    asked = [
        s
        for sim in sims
        for path in ("mine", "elsewhere")
        for s in sim.calls(f"/api/sessions/{path}/status")
    ]
    assert {s.query["api_key"] for s in asked} == {"wrong", API_KEY}
