"""Talking to instances: what counts as "not sent", deadlines, the connection pool, and the
``X-Gateway-Outcome`` every failure of the gateway's own carries."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
from aiohttp import web

from dev.ports import free_port
from gateway.shared.loader import describe, load_settings
from gateway.shared.settings import Settings
from tests.harness import API_KEY, eventually, peak_overlap
from tests.support import (
    ADMIN_TOKEN,
    BlackHole,
    RawInstance,
    RawRequest,
    admin,
    instance_up,
    metric,
    pin,
    stand_in,
)

SEND = {"api_key": API_KEY, "recipient_phone": "1", "message": "m"}


def outcome_of(headers: Any, body: Any) -> str:
    """The outcome the gateway states, checked to be the same in header and body."""
    assert headers["X-Gateway-Outcome"] == body["outcome"], (dict(headers), body)
    return body["outcome"]


async def test_a_black_holed_instance_gets_no_create_and_is_not_waited_for_twice(
    simulators, gateways, http
):
    """A connect timeout reached nothing: the create is placed elsewhere at once."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], connect_timeout=0.3, health_timeout=0.3)
    await sims[0].runner.cleanup()
    hole = BlackHole(int(sims[0].url.rsplit(":", 1)[1]))
    try:
        async with http.post(
            f"{gw.url}/api/sessions", json={"session_id": "bh-1", "api_key": API_KEY}
        ) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-WhatsApp-Instance"] == sims[1].url
        assert "bh-1" in sims[1].sessions

        async def marked_down() -> bool:
            return not await instance_up(http, gw.url, sims[0].url)

        await eventually(marked_down, timeout=5)
        errors = "gateway_upstream_errors_total"
        assert await metric(http, gw.url, errors, upstream=sims[0].url, kind="timeout") is None
        assert await metric(http, gw.url, errors, upstream=sims[0].url, kind="connect_timeout")
    finally:
        hole.close()


async def test_a_trickling_instance_cannot_hold_a_request_past_read_timeout(
    gateways, http, teardown
):
    async def trickle(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Length": "60"})
        await response.prepare(request)
        for _ in range(60):
            await response.write(b" ")
            await asyncio.sleep(0.1)
        return response

    instance = await stand_in(teardown, trickle)
    gw = await gateways([instance.url], read_timeout=0.5)
    started = time.monotonic()
    async with asyncio.timeout(4), http.get(f"{gw.url}/info") as r:
        assert r.status == 504
        assert outcome_of(r.headers, await r.json()) == "unknown"
    assert time.monotonic() - started < 3


async def test_every_failure_of_the_gateways_own_states_the_outcome(
    simulators, gateways, http, teardown
):
    """not-sent: nothing reached an instance; unknown: it may have acted."""
    release = asyncio.Event()

    async def hang(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({"success": True})

    slow = await stand_in(teardown, hang)
    teardown.callback(release.set)
    cutter = await RawInstance(lambda request: None).start(teardown)
    gw = await gateways([slow.url, cutter.url], read_timeout=0.3, admin_token=ADMIN_TOKEN)
    await pin(http, gw.url, "slow-1", slow.url)
    await pin(http, gw.url, "cut-1", cutter.url)
    for sid, status in [("slow-1", 504), ("cut-1", 502)]:
        async with http.post(f"{gw.url}/api/messages/send", json={**SEND, "session_id": sid}) as r:
            assert r.status == status, await r.text()
            assert outcome_of(r.headers, await r.json()) == "unknown", sid

    sims = await simulators(2)
    full = await gateways([sims[0].url], max_sessions_per_instance=1)
    for sid, status in [("full-1", 200), ("full-2", 503)]:
        async with http.post(
            f"{full.url}/api/sessions", json={"session_id": sid, "api_key": API_KEY}
        ) as r:
            assert r.status == status, await r.text()
            body = await r.json()
    assert outcome_of(r.headers, body) == "not-sent"

    none_up = await gateways([f"http://127.0.0.1:{free_port()}"])
    async with http.get(f"{none_up.url}/info") as r:
        assert r.status == 503
        assert outcome_of(r.headers, await r.json()) == "not-sent"

    refusing = await gateways([sims[1].url])
    await sims[1].runner.cleanup()
    async with http.get(f"{refusing.url}/info") as r:
        assert r.status == 502
        assert outcome_of(r.headers, await r.json()) == "not-sent"


# --- the pool ------------------------------------------------------------------------------


async def test_connections_idle_past_keepalive_are_not_reused(gateways, http, teardown):
    """An instance drops idle connections (Node: after 5 s); the gateway lets go sooner."""

    def node_like(request: RawRequest) -> tuple[int, dict[str, Any]] | None:
        if request.reused and request.idle > 0.6:
            return None  # its keep-alive timer fired as the request came in
        return 200, {"success": True}

    instance = await RawInstance(node_like).start(teardown)
    gw = await gateways([instance.url], upstream_keepalive=0.3)
    for _ in range(2):
        async with http.post(f"{gw.url}/cleanup/run", json={"api_key": API_KEY}) as r:
            assert r.status == 200, await r.text()
        await asyncio.sleep(0.8)  # idle time is what is under test, not a synchronisation
    assert [r.target for r in instance.answered].count("/cleanup/run") == 2
    assert Settings().upstream_keepalive < 5  # below Node's default keepAliveTimeout


async def test_a_read_on_a_stale_pooled_connection_is_retried(gateways, http, teardown):
    """A reused connection the instance already dropped: a GET goes again on a fresh one."""

    def drops_reused(request: RawRequest) -> tuple[int, dict[str, Any]] | None:
        return None if request.reused else (200, {"success": True})

    instance = await RawInstance(drops_reused).start(teardown)
    gw = await gateways([instance.url])
    for _ in range(3):
        async with http.get(f"{gw.url}/info") as r:
            assert r.status == 200, await r.text()
    assert [r.target for r in instance.answered if r.target == "/info"] == ["/info"] * 3


async def test_connections_per_instance_are_capped_and_waits_counted(gateways, http, teardown):
    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(0.1)
        return web.json_response({"success": True})

    instance = await stand_in(teardown, slow)
    gw = await gateways([instance.url], max_connections_per_instance=2)

    async def call() -> int:
        async with http.get(f"{gw.url}/info") as r:
            return r.status

    assert await asyncio.gather(*(call() for _ in range(8))) == [200] * 8
    assert peak_overlap(instance.forwarded()) <= 2
    waits = await metric(
        http, gw.url, "gateway_upstream_pool_wait_seconds_count", upstream=instance.url
    )
    assert waits is not None and waits >= 1
    assert Settings().max_connections_per_instance == 256


async def test_an_instance_url_with_a_path_prefix_works(gateways, http, teardown):
    async def status(request: web.Request) -> web.Response:
        return web.json_response({"session_id": "pre-1", "status": "connected"})

    instance = await stand_in(teardown, status, prefix="/wa1")
    gw = await gateways([instance.url])
    assert await instance_up(http, gw.url, instance.url)
    async with http.get(f"{gw.url}/api/sessions/pre-1/status", params={"api_key": API_KEY}) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-WhatsApp-Instance"] == instance.url
    assert instance.forwarded()[-1].path_qs == f"/wa1/api/sessions/pre-1/status?api_key={API_KEY}"


async def test_drain_marks_survive_a_redis_that_comes_back_empty(
    simulators, gateways, http, own_redis, redis_prefix
):
    sims = await simulators(2)
    gw = await gateways(
        [s.url for s in sims], redis_url=own_redis.url, redis_timeout=0.2, admin_token=ADMIN_TOKEN
    )
    code, _ = await admin(http, gw.url, "POST", "/gateway/instances/0/drain")
    assert code == 200
    own_redis.stop()
    own_redis.start()  # empty: it keeps nothing on disk
    client = aioredis.Redis.from_url(own_redis.url, decode_responses=True)
    try:

        async def written_back() -> bool:
            return await client.smembers(f"{redis_prefix}wa-gateway:draining") == {sims[0].url}

        await eventually(written_back, timeout=5)
    finally:
        await client.aclose()
    _, body = await admin(http, gw.url, "GET", "/gateway/instances")
    assert [i["draining"] for i in body["instances"]] == [True, False]
    async with http.post(
        f"{gw.url}/api/sessions", json={"session_id": "after", "api_key": API_KEY}
    ) as r:
        assert r.headers["X-WhatsApp-Instance"] == sims[1].url


def test_check_config_masks_a_password_in_a_dsn_query():
    settings = load_settings(
        {
            "MYSQL_DSN": "mysql://app@db:3306/wa?password=hunter2&charset=utf8mb4",
        }
    )
    shown = {name: value for name, value, _ in describe(settings)}
    assert "hunter2" not in shown["mysql_dsn"] and "charset=utf8mb4" in shown["mysql_dsn"]


async def test_unknown_hosts_and_failed_tls_are_failures_that_sent_nothing(
    simulators, gateways, http
):
    sims = await simulators(1)
    no_dns = "http://no-such-host.invalid:3001"
    no_tls = sims[0].url.replace("http://", "https://")  # TLS to a plain HTTP port
    gw = await gateways([no_dns, no_tls, sims[0].url], admin_token=ADMIN_TOKEN)
    _, body = await admin(http, gw.url, "GET", "/gateway/instances")
    assert [i["last_error"] for i in body["instances"]] == ["dns", "tls", None]
    errors = "gateway_upstream_errors_total"
    assert await metric(http, gw.url, errors, upstream=no_dns, kind="dns")
    assert await metric(http, gw.url, errors, upstream=no_tls, kind="tls")
