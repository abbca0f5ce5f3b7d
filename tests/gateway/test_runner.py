"""Both ways into the gateway answer alike: the server handing the instance API straight to
its handler (``GatewayRunner``: ``python -m gateway`` and the other tests) and the app's
router with its middleware (any plain ``AppRunner``)."""

from __future__ import annotations

import asyncio

from gateway.app import GATEWAY, create_app
from tests.harness import API_KEY, gateway_settings, serve
from tests.support import raw_http


async def test_through_the_apps_router_the_instance_api_answers_the_same(
    simulators, redis_prefix, http
):
    sims = await simulators(1)
    settings = gateway_settings([sims[0].url], redis_prefix)
    app = create_app(settings)
    runner, url = await serve(app, settings.port)  # a plain AppRunner
    try:
        body = {"session_id": "plain-1", "api_key": API_KEY}
        async with http.post(f"{url}/api/sessions", json=body) as r:
            assert r.status == 200, await r.text()
            assert r.headers["X-WhatsApp-Instance"] == sims[0].url
            assert r.headers["X-Request-ID"]
        not_a_path = await raw_http(url, "*", method="OPTIONS")
        assert not_a_path.status == 400 and not_a_path.json()["success"] is False
        labels = {"route": "/api/sessions", "method": "POST", "status": "200"}
        counted = app[GATEWAY].metrics.registry.get_sample_value(
            "gateway_requests_total", {**labels, "upstream": sims[0].url}
        )
        assert counted == 1
    finally:
        await runner.cleanup()


async def test_a_request_expecting_100_continue_is_answered_on_the_direct_path_too(
    simulators, gateways, http
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    body = {"session_id": "cont-1", "api_key": API_KEY}
    async with (
        asyncio.timeout(5),  # unanswered, the client would wait for its 100 for ever
        http.post(f"{gw.url}/api/sessions", json=body, expect100=True) as r,
    ):
        assert r.status == 200, await r.text()
        assert r.headers["X-WhatsApp-Instance"] == sims[0].url
    assert "cont-1" in sims[0].sessions
