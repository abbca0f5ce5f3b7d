"""Reconciliation: the pure decision, then real runs against shuffled simulators."""

from __future__ import annotations

import asyncio
from collections import Counter

import aiohttp
import redis.asyncio as aioredis

from dev.ports import free_port
from gateway.decisions.corrections import SLICE, Correction, correction_parts, corrections
from tests.gateway.test_admin import (
    TOKEN,
    admin,
    create,
    create_directly,
    delete_directly,
    move_directly,
    status_via,
)
from tests.harness import RunningGateway, Sim, eventually, sample

A, B, C = "http://a", "http://b", "http://c"

# --- the decision, without I/O -----------------------------------------------------------


def test_wrong_pins_are_moved_and_unknown_sessions_added():
    pins = {"s1": A, "s2": A, "s3": B}
    listings = {A: ["s1"], B: ["s2", "s3", "new"], C: []}
    assert corrections(pins, listings, complete=True) == [
        Correction("moved", "s2", A, B),
        Correction("added", "new", None, B),
    ]


def test_right_pins_need_no_correction():
    assert corrections({"s1": A, "s2": B}, {A: ["s1"], B: ["s2"]}, complete=True) == []


def test_pins_of_unlisted_sessions_are_removed_only_on_a_complete_view():
    pins = {"s1": A, "gone": B}
    listings = {A: ["s1"], B: []}
    assert corrections(pins, listings, complete=True) == [Correction("removed", "gone", B, None)]
    assert corrections(pins, listings, complete=False) == []


def test_a_session_listed_twice_keeps_its_pin_when_it_is_a_holder():
    listings = {A: ["twice"], B: ["twice"], C: []}
    assert corrections({"twice": B}, listings, complete=True) == []
    assert corrections({"twice": C}, listings, complete=True) == [
        Correction("moved", "twice", C, A)  # else the first holder in configured order
    ]
    assert corrections({}, {B: ["twice"], A: ["twice"]}, complete=False) == [
        Correction("added", "twice", None, B)
    ]


# --- real runs ---------------------------------------------------------------------------


def truth(sims: list[Sim]) -> dict[str, str]:
    """Where every session really is."""
    return {sid: sim.url for sim in sims for sid in sim.sessions}


async def pins_agree(
    gw: RunningGateway, redis_client: aioredis.Redis, expected: dict[str, str]
) -> bool:
    stored = await redis_client.hgetall(gw.gw.pins.keys.sessions)
    return stored == expected and gw.gw.pins.sessions == expected


async def shuffle(http: aiohttp.ClientSession, sims: list[Sim], sids: list[str]) -> None:
    """What a restart of every instance does: sessions come back on other instances."""
    where = truth(sims)
    urls = [s.url for s in sims]
    for sid in sids:
        source = where[sid]
        await move_directly(http, sid, source, urls[(urls.index(source) + 1) % len(urls)])


async def test_one_reconciliation_fixes_every_pin(simulators, gateways, http, redis_client):
    sims = await simulators(3)
    urls = [s.url for s in sims]
    gw = await gateways(urls, admin_token=TOKEN)
    other = await gateways(urls)  # a second process sharing the Redis
    owners = {f"r-{i}": await create(http, gw, f"r-{i}", workspace_id=i) for i in range(12)}
    await shuffle(http, sims, [f"r-{i}" for i in range(0, 12, 2)])
    await delete_directly(http, owners["r-1"], "r-1")  # gone from every instance
    await create_directly(http, urls[2], "stray", workspace_id=77)  # never seen by the gateway
    await create_directly(http, urls[0], "stray-2", workspace_id=3)  # workspace 3 is pinned

    status, body = await admin(http, gw, "POST", "/gateway/reconcile")
    assert status == 200 and body["instances_unanswered"] == []
    kinds = Counter(c["kind"] for c in body["corrections"])
    assert kinds == {"moved": 6, "added": 2, "removed": 1}
    expected = truth(sims)
    assert await pins_agree(gw, redis_client, expected)
    await eventually(lambda: pins_agree(other, redis_client, expected))
    workspaces = await redis_client.hgetall(gw.gw.pins.keys.workspaces)
    assert workspaces["77"] == urls[2]
    assert workspaces["3"] == owners["r-3"]  # a workspace's existing pin is kept
    active = await redis_client.hgetall(gw.gw.pins.keys.active)
    assert active == {s.url: str(len(s.sessions)) for s in sims}
    for kind, count in kinds.items():
        assert sample(gw, "gateway_reconcile_corrections_total", kind=kind) == count

    for sid, url in expected.items():
        assert await status_via(http, gw, sid) == url
    assert sample(gw, "gateway_rediscoveries_total", result="found") is None
    _, body = await admin(http, gw, "POST", "/gateway/reconcile")
    assert body["corrections"] == []


async def test_the_periodic_run_fixes_pins_within_an_interval(
    simulators, gateways, http, redis_client
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], reconcile_interval=0.2)
    for i in range(4):
        await create(http, gw, f"p-{i}")
    await shuffle(http, sims, ["p-0", "p-1"])
    await create_directly(http, sims[0].url, "p-new")
    expected = truth(sims)
    assert not await pins_agree(gw, redis_client, expected)
    await eventually(lambda: pins_agree(gw, redis_client, expected))


async def test_sessions_present_at_start_up_are_pinned_before_serving(
    simulators, gateways, http, redis_client
):
    sims = await simulators(2)
    for i, sim in enumerate(sims):
        await create_directly(http, sim.url, f"early-{i}", workspace_id=10 + i)
    gw = await gateways([s.url for s in sims])
    assert await pins_agree(gw, redis_client, truth(sims))
    assert gw.gw.pins.workspaces == {"10": sims[0].url, "11": sims[1].url}
    assert gw.gw.pins.active == {sims[0].url: 1, sims[1].url: 1}


async def test_pins_are_kept_while_an_instance_cannot_be_listed(
    simulators, gateways, http, redis_client
):
    sims = await simulators(2)
    (locked,) = await simulators(1, api_key="another-key")  # up, but refuses our key
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateways([sims[0].url, sims[1].url, locked.url, dead], admin_token=TOKEN)
    assert await create(http, gw, "k-0") == sims[0].url
    assert await create(http, gw, "k-1") == sims[1].url
    await delete_directly(http, sims[0].url, "k-0")  # maybe on the instances we cannot see
    await admin(http, gw, "PUT", "/gateway/sessions/k-dead", json={"instance": dead})
    await move_directly(http, "k-1", sims[1].url, sims[0].url)

    _, body = await admin(http, gw, "POST", "/gateway/reconcile")
    assert body["corrections"] == [
        {"kind": "moved", "session_id": "k-1", "from": sims[1].url, "to": sims[0].url}
    ]
    assert set(body["instances_unanswered"]) == {locked.url, dead}
    expected = {"k-0": sims[0].url, "k-1": sims[0].url, "k-dead": dead}
    assert await pins_agree(gw, redis_client, expected)
    assert sample(gw, "gateway_reconcile_corrections_total", kind="removed") is None


async def test_concurrent_runs_share_one(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    await create_directly(http, sims[1].url, "c-1")
    first, second = await asyncio.gather(gw.gw.reconciler.run(), gw.gw.reconciler.run())
    assert first is second
    assert first.corrections == [Correction("added", "c-1", None, sims[1].url)]
    assert sample(gw, "gateway_reconcile_corrections_total", kind="added") == 1


def test_the_decision_comes_in_slices_small_enough_to_yield_the_loop_between():
    pins = {f"s{n}": A for n in range(10_000)}
    listings = {A: [f"s{n}" for n in range(0, 10_000, 2)], B: [f"s{n}" for n in range(1, 9_999, 2)]}
    parts = list(correction_parts(pins, listings, complete=True))
    assert len(parts) >= 3 * (10_000 // SLICE)  # listings, listed sessions, pins
    assert max(len(part) for part in parts) <= SLICE
    changes = [change for part in parts for change in part]
    assert Counter(c.kind for c in changes) == {"moved": 4_999, "removed": 1}
    assert changes == corrections(pins, listings, complete=True)
