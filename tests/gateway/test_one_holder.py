"""One session, one instance: whatever the verb, the case of the path or an unknown outcome."""

from __future__ import annotations

import asyncio

import aiohttp

from tests.gateway.test_proxy import create
from tests.harness import API_KEY, sample


async def holders(sims, sid: str) -> list[str]:  # type: ignore[no-untyped-def]
    return [s.url for s in sims if sid in s.sessions]


async def test_concurrent_restores_of_an_unknown_session_make_one_copy(simulators, gateways, http):
    sims = await simulators(3)
    first, second = await gateways([s.url for s in sims]), await gateways([s.url for s in sims])

    async def restore(gw: str) -> str:
        url = f"{gw}/api/sessions/lost-1/restore"
        async with http.post(url, json={"api_key": API_KEY}) as resp:
            assert resp.status == 200, await resp.text()
            return resp.headers["X-WhatsApp-Instance"]

    answers = await asyncio.gather(*(restore((first, second)[i % 2].url) for i in range(6)))
    assert len(set(answers)) == 1
    assert await holders(sims, "lost-1") == [answers[0]]


async def test_paths_are_routed_without_regard_to_case_as_express_does(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    owner = await create(http, gw.url, "s1")
    elsewhere = (await create(http, gw.url, "s2")).headers["X-WhatsApp-Instance"]
    assert elsewhere != owner.headers["X-WhatsApp-Instance"]
    # a session action in capitals goes where the session lives
    async with http.post(f"{gw.url}/API/Sessions/s2/RESTORE", json={"api_key": API_KEY}) as r:
        assert r.status == 200 and r.headers["X-WhatsApp-Instance"] == elsewhere
    assert await holders(sims, "s2") == [elsewhere]
    # the path's session wins over the body's, as the instance reads it
    body = {"api_key": API_KEY, "session_id": "s1"}
    async with http.post(f"{gw.url}/API/sessions/s2/restore", json=body) as r:
        assert r.headers["X-WhatsApp-Instance"] == elsewhere
    # a create in capitals is placed and pinned like any create
    async with http.post(
        f"{gw.url}/API/SESSIONS", json={"session_id": "s3", "api_key": API_KEY}
    ) as r:
        assert r.status == 200
        placed = r.headers["X-WhatsApp-Instance"]
    assert gw.gw.pins.sessions["s3"] == placed
    assert sample(gw, "gateway_placements_total", upstream=placed) is not None
    # a delete in mixed case removes the pin and the count
    active = gw.gw.fleet.get(placed).sessions  # type: ignore[union-attr]
    async with http.delete(f"{gw.url}/api/Sessions/s3", json={"api_key": API_KEY}) as r:
        assert r.status == 200
    assert "s3" not in gw.gw.pins.sessions
    assert gw.gw.fleet.get(placed).sessions == active - 1  # type: ignore[union-attr]


async def test_a_create_whose_outcome_is_unknown_is_retried_on_the_same_instance(
    simulators, gateways, http
):
    sims = await simulators(2, latency=0.4)
    hasty = await gateways([s.url for s in sims], read_timeout=0.2)
    patient = await gateways([s.url for s in sims])
    async with http.post(
        f"{hasty.url}/api/sessions", json={"session_id": "u-1", "api_key": API_KEY}
    ) as resp:
        assert resp.status == 504 and resp.headers["X-Gateway-Outcome"] == "unknown"
        reached = (await resp.json())["instance"]
    # the other instance is now the less loaded one, but the session may exist here
    retry = await create(http, patient.url, "u-1")
    assert retry.status == 200 and retry.headers["X-WhatsApp-Instance"] == reached
    assert await holders(sims, "u-1") == [reached]


async def test_a_lookup_without_a_key_is_refused_and_learns_nothing(
    simulators, gateways, http: aiohttp.ClientSession
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    # a session the gateway has not pinned (made on the instance itself)
    async with http.post(
        f"{sims[1].url}/api/sessions", json={"session_id": "victim-1", "api_key": API_KEY}
    ) as r:
        assert r.status == 200
    before = sum(len(s.calls("/api/sessions/victim-1/status")) for s in sims)
    async with http.get(f"{gw.url}/api/sessions/victim-1/status") as r:
        assert r.status == 401
        assert "X-WhatsApp-Instance" not in r.headers
    assert "victim-1" not in gw.gw.pins.sessions
    assert sum(len(s.calls("/api/sessions/victim-1/status")) for s in sims) == before
    # with the caller's own key, it is found as before
    async with http.get(f"{gw.url}/api/sessions/victim-1/status?api_key={API_KEY}") as r:
        assert r.status == 200 and r.headers["X-WhatsApp-Instance"] == sims[1].url


async def test_a_create_lock_outlives_its_ttl_while_its_holder_works(simulators, gateways, http):
    """A create slower than the lock's life keeps the lock (its holder renews it): a
    concurrent create through another process waits for it, then finds its pin."""
    sims = await simulators(2, latency=1.2)
    first, second = await gateways([s.url for s in sims]), await gateways([s.url for s in sims])
    for gw in (first, second):
        gw.gw.pins.flights.lock_ttl = 0.3
    answers = await asyncio.gather(
        create(http, first.url, "slow-1"), create(http, second.url, "slow-1")
    )
    assert [a.status for a in answers] == [200, 200]
    owners = {a.headers["X-WhatsApp-Instance"] for a in answers}
    assert len(owners) == 1 and await holders(sims, "slow-1") == list(owners)


async def test_a_create_never_goes_ahead_without_the_lock(simulators, gateways, http, redis_client):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    gw.gw.pins.flights.wait = 0.3
    # another process holds the lock, alive (it renews it) past this one's wait
    lock = gw.gw.pins.keys.creating("held-1")
    await redis_client.set(lock, "someone-else", px=5000)
    resp = await create(http, gw.url, "held-1")
    assert resp.status == 503 and resp.headers["X-Gateway-Outcome"] == "not-sent"
    assert await holders(sims, "held-1") == []
    # a holder that died stops renewing: its lock is gone within its life, and the create goes
    await redis_client.pexpire(lock, 200)
    gw.gw.pins.flights.wait = 5.0
    resp = await create(http, gw.url, "held-1")
    assert resp.status == 200 and len(await holders(sims, "held-1")) == 1


async def test_a_create_of_a_session_an_instance_holds_unpinned_goes_there(
    simulators, gateways, http
):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims])
    # made on the last instance behind the gateway's back: the least loaded would be the first
    async with http.post(
        f"{sims[2].url}/api/sessions", json={"session_id": "outside-1", "api_key": API_KEY}
    ) as r:
        assert r.status == 200
    resp = await create(http, gw.url, "outside-1")
    assert resp.status == 200 and resp.headers["X-WhatsApp-Instance"] == sims[2].url
    assert await holders(sims, "outside-1") == [sims[2].url]
    assert gw.gw.pins.sessions["outside-1"] == sims[2].url
