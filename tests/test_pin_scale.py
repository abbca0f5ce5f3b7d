"""A large pin map: loaded whole in batches that fit in ``redis_timeout``, one URL string
per instance however many sessions it holds."""

from __future__ import annotations

from gateway.metrics import Metrics
from gateway.state.instances import Fleet
from gateway.state.store import PinStore
from tests.conftest import REDIS_URL

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
        REDIS_URL, f"{redis_prefix}wa-gateway:", 0.15, 10, metrics=Metrics(), fleet=fleet
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
