"""Redis under Sentinel: the gateway and the workers follow the primary through a failover."""

from __future__ import annotations

import json
import time

import pytest

from gateway.shared.redis_url import RedisUrlError, sentinel_target
from tests.gateway.test_proxy import create
from tests.harness import API_KEY, eventually, sample
from tests.redis_servers import SERVICE, until
from tests.workers.test_prefix_probe import check_config
from workers.connections import redis_client as worker_client


def test_sentinel_urls_are_read_and_bad_ones_refused():
    target = sentinel_target(
        "redis+sentinel://:p%40ss@h1:26379,h2:26380/mymaster/2?sentinel_password=s"
    )
    assert target is not None
    assert target.sentinels == (("h1", 26379), ("h2", 26380))
    assert (target.service, target.db, target.password) == ("mymaster", 2, "p@ss")
    assert target.sentinel_password == "s"
    assert sentinel_target("redis://127.0.0.1:6379/0") is None
    for bad in ("redis+sentinel://h1:26379", "redis+sentinel://h1:x/m", "redis+sentinel://h:1/m/a"):
        with pytest.raises(RedisUrlError):
            sentinel_target(bad)


async def test_the_gateway_follows_the_primary_through_a_failover(
    topology, simulators, gateways, http, redis_prefix
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], redis_url=topology.url)
    assert (await create(http, gw.url, "before-1")).status == 200
    sessions = f"{redis_prefix}wa-gateway:sessions"
    assert topology.client(topology.primary).hexists(sessions, "before-1")
    async with http.get(f"{gw.url}/health") as r:
        assert (await r.json())["redis_primary"] == f"127.0.0.1:{topology.primary}"

    promoted = topology.fail_over()

    async def followed() -> bool:
        return gw.gw.follower is not None and gw.gw.follower.primary == promoted

    await eventually(followed, timeout=20)

    # writes go to the new primary, and what was known stays known
    async def placed() -> bool:
        resp = await create(http, gw.url, "after-1")
        return resp.status == 200 and bool(
            topology.client(topology.replica).hexists(sessions, "after-1")
        )

    await eventually(placed, timeout=10)
    async with http.get(f"{gw.url}/api/sessions/before-1/status?api_key={API_KEY}") as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/health") as r:
        assert (await r.json())["redis_primary"] == promoted


def test_both_check_configs_name_the_primary_sentinel_names(topology):
    for module in ("gateway", "workers"):
        expected = f"redis primary: 127.0.0.1:{topology.primary} (Sentinel service {SERVICE!r})"
        assert check_config(module, topology.url, "redis primary:") == [expected]
    promoted = topology.fail_over()

    def named() -> bool:
        line = check_config("workers", topology.url, "redis primary:")
        return line == [f"redis primary: {promoted} (Sentinel service {SERVICE!r})"]

    until(named, what="the promoted primary in check-config")
    plain = f"redis://127.0.0.1:{topology.primary}/0"  # Sentinel makes it a replica

    def demoted() -> bool:
        [line] = check_config("gateway", plain, "redis primary:")
        return line.endswith("is a replica, not a primary: writes will fail")

    until(demoted, what="the demoted primary in check-config")


async def test_the_workers_client_writes_to_the_primary_sentinel_names(topology):
    client = worker_client(topology.url)
    try:
        await client.set("sentinel-probe", "1")
        assert topology.client(topology.primary).get("sentinel-probe") == b"1"
    finally:
        await client.aclose()


async def test_with_min_replicas_nothing_is_acknowledged_that_a_failover_could_lose(
    topology, simulators, gateways, http, redis_prefix
):
    from gateway.shared.signature import signed_headers

    sims = await simulators(1)
    primary = f"redis://127.0.0.1:{topology.primary}/0"
    gw = await gateways(
        [sims[0].url], redis_url=primary, redis_min_replicas=1, hmac_secret="s3cret"
    )
    assert (await create(http, gw.url, "r-1")).status == 200

    async def event(n: int) -> int:
        body = json.dumps({"event": "message_received", "data": {"session_id": "r-1", "n": n}})
        headers = {**signed_headers("s3cret", body.encode(), time.time())}
        headers["Content-Type"] = "application/json"
        url = f"{gw.url}/api/whatsapp/webhooks/webjs"
        async with http.post(url, data=body, headers=headers) as r:
            return r.status

    assert await event(1) == 200
    pending = f"{redis_prefix}wa-gateway:{{webhooks}}:pending"
    assert topology.client(topology.replica).zcard(pending) == 1  # on the replica already

    send = {"session_id": "r-1", "api_key": API_KEY, "recipient_phone": "1", "message": "x"}
    topology.processes[1].kill()  # the only replica is gone
    topology.processes[1].wait()
    assert await event(2) == 503  # kept on the primary, but not acknowledged
    async with http.post(
        f"{gw.url}/api/messages/send", json=send, headers={"Idempotency-Key": "k:1"}
    ) as r:
        assert r.status == 503 and r.headers["X-Gateway-Outcome"] == "not-sent"
    assert sims[0].calls("/api/messages/send") == []
    assert sample(gw, "gateway_webhooks_rejected_total", reason="not_replicated") == 1
