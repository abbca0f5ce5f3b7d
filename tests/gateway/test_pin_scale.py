"""A large pin map: loaded whole (and once) in batches that fit in ``redis_timeout``, one URL
string per instance however many sessions it holds, and reconciled without stalling the loop."""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import uuid

import redis.asyncio as aioredis
from aiohttp import web

from dev.ports import free_port
from gateway.metrics import GatewayMetrics
from gateway.state.instances import Fleet
from gateway.state.store import PinStore
from tests.harness import REDIS_URL, eventually, gateway_settings
from tests.support import Answer, stand_in

PINS = 300_000  # one HGETALL of these takes longer than the timeout below


async def test_a_map_larger_than_one_reply_loads_whole_within_redis_timeout(
    redis_client, redis_prefix
):
    urls = ("http://10.0.0.1:3001", "http://10.0.0.2:3001", "http://10.0.0.3:3001")
    key = f"{redis_prefix}wa-gateway:sessions"
    for start in range(0, PINS, 50_000):
        batch = {f"s-{n:07d}": urls[n % 3] for n in range(start, start + 50_000)}
        await redis_client.hset(key, mapping=batch)  # type: ignore[arg-type]
    await redis_client.hset(key, "gone-1", "http://10.0.0.9:3001")  # a removed instance

    fleet = Fleet.from_urls(urls)
    store = PinStore(
        REDIS_URL, f"{redis_prefix}wa-gateway:", 0.15, 10, metrics=GatewayMetrics(), fleet=fleet
    )
    await store.start()
    try:
        assert store.available
        assert len(store.sessions) == PINS + 1
        assert store.sessions["s-0000004"] == urls[1]
        assert store.sessions["gone-1"] == "http://10.0.0.9:3001"
        assert len({id(url) for url in store.sessions.values()}) == 4
    finally:
        await store.close()


PASS_PINS = 200_000


async def _longest_stall(stop: asyncio.Event) -> float:
    """The longest time the loop was kept from this task, until ``stop``."""
    longest, last = 0.0, time.perf_counter()
    while not stop.is_set():
        await asyncio.sleep(0)
        now = time.perf_counter()
        longest, last = max(longest, now - last), now
    return longest


async def test_a_reconciliation_pass_over_many_pins_leaves_the_loop_free(
    gateways, redis_client, redis_prefix, teardown
):
    """The pass works in slices: no single stall of the loop comes near the pass's length."""
    ids = [str(uuid.UUID(int=n + 1)) for n in range(PASS_PINS)]
    bodies: list[bytes] = []

    def lister(k: int) -> Answer:
        async def answer(_: web.Request) -> web.Response:
            return web.Response(body=bodies[k], content_type="application/json")

        return answer

    urls = [(await stand_in(teardown, lister(k))).url for k in range(4)]
    truth = {sid: urls[n % 4] for n, sid in enumerate(ids)}
    for k in range(4):
        listed = [{"session_id": sid, "status": "connected"} for sid in ids[k::4]]
        bodies.append(json.dumps({"success": True, "sessions": listed}).encode())
    stored = {**truth, **{sid: urls[0] for sid in ids[1:40:4]}}  # ten pins wrong
    stored |= {f"gone-{n}": urls[2] for n in range(10)}  # ten sessions no instance lists
    key = f"{gateway_settings(urls, redis_prefix).key_prefix}sessions"
    pipe = redis_client.pipeline(transaction=False)
    for start in range(0, len(stored), 50_000):
        pipe.hset(key, mapping=dict(itertools.islice(stored.items(), start, start + 50_000)))
    await pipe.execute()

    gw = await gateways(urls)  # its start-up pass corrects the twenty
    assert gw.gw.pins.sessions == truth
    stop = asyncio.Event()
    watcher = asyncio.create_task(_longest_stall(stop))
    await asyncio.sleep(0)
    began = time.perf_counter()
    outcome = await gw.gw.reconciler.run()
    total = time.perf_counter() - began
    stop.set()
    longest = await watcher
    assert outcome.corrections == [] and outcome.unanswered == []
    assert gw.gw.pins.sessions == truth
    assert longest < total / 4, (longest, total)


async def test_the_pin_map_is_loaded_once_at_start_up(gateways, own_redis, redis_prefix):
    stand_ins = [f"http://127.0.0.1:{free_port()}"]  # nobody there: health and listing fail
    gw = await gateways(stand_ins, redis_url=own_redis.url)
    pins = gw.gw.pins

    async def following() -> bool:
        return pins.map.mirrored

    await eventually(following)  # the follower subscribed (and would have loaded again)
    redis = aioredis.Redis.from_url(own_redis.url)
    try:
        stats = await redis.info("commandstats")
    finally:
        await redis.aclose()
    assert stats["cmdstat_getset"]["calls"] == 1, stats  # one per load: the "loaded" mark
    assert stats["cmdstat_hscan"]["calls"] == 2, stats  # the sessions, the workspaces
