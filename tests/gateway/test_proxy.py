"""The proxy as the backend sees it: routing rules, transparency, bad input, metrics."""

from __future__ import annotations

import gzip
import json

import aiohttp
from aiohttp import web

from dev.ports import free_port
from tests.harness import API_KEY, BOTH_ENGINES, serve

pytestmark = BOTH_ENGINES  # the same behaviour from both engines


async def create(
    http: aiohttp.ClientSession, gw: str, sid: str, **body: object
) -> aiohttp.ClientResponse:
    async with http.post(
        f"{gw}/api/sessions", json={"session_id": sid, "api_key": API_KEY, **body}
    ) as resp:
        await resp.read()
        return resp


async def test_create_then_every_call_goes_to_the_holding_instance(simulators, gateways, http):
    sims = await simulators(4)
    gw = await gateways([s.url for s in sims])
    resp = await create(http, gw.url, "s-1", workspace_id=3)
    assert resp.status == 200
    owner = resp.headers["X-WhatsApp-Instance"]
    assert owner == sims[0].url  # all empty: the first configured one
    holder = next(s for s in sims if s.url == owner)
    assert "s-1" in holder.sessions

    send = {"session_id": "s-1", "api_key": API_KEY, "recipient_phone": "62811", "message": "hi"}
    async with http.post(f"{gw.url}/api/messages/send", json=send) as r:
        assert r.status == 200
        assert r.headers["X-WhatsApp-Instance"] == owner
        assert (await r.json())["success"] is True
    async with http.get(f"{gw.url}/api/sessions/s-1/status", params={"api_key": API_KEY}) as r:
        assert r.status == 200 and (await r.json())["messages_sent"] == 1
    # the session id may also come from the query string
    async with http.get(f"{gw.url}/api/messages/s-1/validate?api_key={API_KEY}") as r:
        assert r.headers["X-WhatsApp-Instance"] == owner


async def test_new_sessions_go_to_the_least_loaded_instance(simulators, gateways, http):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims])
    owners = [
        (await create(http, gw.url, f"s-{i}")).headers["X-WhatsApp-Instance"] for i in range(6)
    ]
    assert owners == [s.url for s in sims] * 2


async def test_full_instances_answer_503_naming_the_limit(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], max_sessions_per_instance=1)
    assert (await create(http, gw.url, "a")).status == 200
    assert (await create(http, gw.url, "b")).status == 200
    async with http.post(
        f"{gw.url}/api/sessions", json={"session_id": "c", "api_key": API_KEY}
    ) as r:
        assert r.status == 503
        body = await r.json()
        assert body["max_sessions_per_instance"] == 1 and "limit" in body["error"]
    assert all("c" not in s.sessions for s in sims)


async def test_delete_unpins_and_frees_room(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], max_sessions_per_instance=1)
    await create(http, gw.url, "a")
    await create(http, gw.url, "b")
    async with http.delete(f"{gw.url}/api/sessions/a", json={"api_key": API_KEY}) as r:
        assert r.status == 200
    assert "a" not in gw.gw.pins.sessions
    assert gw.gw.pins.active[sims[0].url] == 0
    assert (await create(http, gw.url, "c")).headers["X-WhatsApp-Instance"] == sims[0].url


async def test_workspace_placement_keeps_a_workspace_together(simulators, gateways, http):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims], placement="workspace")
    first = (await create(http, gw.url, "w1", workspace_id=9)).headers["X-WhatsApp-Instance"]
    other = (await create(http, gw.url, "x1", workspace_id=10)).headers["X-WhatsApp-Instance"]
    again = (await create(http, gw.url, "w2", workspace_id=9)).headers["X-WhatsApp-Instance"]
    assert first == again != other


async def test_shard_placement_uses_workspace_modulo(simulators, gateways, http):
    sims = await simulators(4)
    gw = await gateways([s.url for s in sims], placement="shard")
    for ws in (0, 5, 6, 11):
        resp = await create(http, gw.url, f"ws-{ws}", workspace_id=ws)
        assert resp.headers["X-WhatsApp-Instance"] == sims[ws % 4].url


async def test_workspace_only_requests_follow_the_workspace(simulators, gateways, http):
    sims = await simulators(4)
    gw = await gateways([s.url for s in sims])
    await create(http, gw.url, "pad")  # sims[0] now has one, so the next goes to sims[1]
    owner = (await create(http, gw.url, "s-ws", workspace_id=21)).headers["X-WhatsApp-Instance"]
    assert owner == sims[1].url
    async with http.get(f"{gw.url}/info", params={"workspace_id": "21"}) as r:
        assert r.headers["X-WhatsApp-Instance"] == owner
    # a workspace with no session yet is sharded
    async with http.get(f"{gw.url}/info", params={"workspace_id": "7"}) as r:
        assert r.headers["X-WhatsApp-Instance"] == sims[7 % 4].url


async def test_list_merges_every_instance_and_names_the_missing(simulators, gateways, http):
    sims = await simulators(3)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateways([*(s.url for s in sims), dead])
    for i in range(5):
        await create(http, gw.url, f"l-{i}")
    async with http.get(f"{gw.url}/api/sessions", params={"api_key": API_KEY}) as r:
        body = await r.json()
    assert body["total"] == 5
    assert sorted(s["session_id"] for s in body["sessions"]) == [f"l-{i}" for i in range(5)]
    assert body["instances_unavailable"] == [dead]
    async with http.get(f"{gw.url}/api/sessions", params={"api_key": "wrong"}) as r:
        assert r.status == 401  # every instance refused the key: passed through


async def test_health_sums_the_instances(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    for i in range(3):
        await create(http, gw.url, f"h-{i}")
    await gw.gw.health.check_all()
    async with http.get(f"{gw.url}/health") as r:
        body = await r.json()
    assert r.status == 200 and body["status"] == "healthy"
    assert body["sessions"] == {"total": 3, "connected": 3, "disconnected": 0}
    assert [(i["url"], i["up"], i["active"]) for i in body["instances"]] == [
        (sims[0].url, True, 2),
        (sims[1].url, True, 1),
    ]


async def test_forwarding_is_transparent(gateways, http):
    """Method, path, query, headers and body go through; the answer comes back as bytes."""
    seen: dict[str, object] = {}
    compressed = gzip.compress(b'{"ok": true}')

    async def echo(request: web.Request) -> web.Response:
        seen.update(
            method=request.method,
            path_qs=request.raw_path,
            headers=dict(request.headers),
            body=await request.read(),
        )
        return web.Response(
            status=207,
            body=compressed,
            headers={"Content-Encoding": "gzip", "Content-Type": "application/json", "X-Up": "1"},
        )

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", echo)
    runner, url = await serve(app)
    try:
        gw = await gateways([url])
        body = json.dumps({"session_id": "t-1", "message": "é"}).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Custom": "v",
            "Connection": "keep-alive",
            "X-Real-IP": "203.0.113.9",  # a caller naming any address it likes
            "Forwarded": "for=203.0.113.9",
        }
        async with aiohttp.ClientSession(auto_decompress=False) as raw:
            await gw.gw.pins.pin_session("t-1", url, source="admin")
            async with raw.put(
                f"{gw.url}/api/sessions/t-1/metadata?a=1&b=%20x", data=body, headers=headers
            ) as r:
                assert r.status == 207
                assert await r.read() == compressed
                assert r.headers["Content-Encoding"] == "gzip"
                assert r.headers["X-Up"] == "1"
                assert r.headers["X-WhatsApp-Instance"] == url
                request_id = r.headers["X-Request-ID"]
        assert seen["method"] == "PUT"
        assert seen["path_qs"] == "/api/sessions/t-1/metadata?a=1&b=%20x"
        assert seen["body"] == body
        fwd = seen["headers"]
        assert isinstance(fwd, dict)
        assert fwd["X-Custom"] == "v"
        assert fwd["X-Forwarded-For"] == "127.0.0.1"
        assert fwd["X-Real-IP"] == "127.0.0.1" and "Forwarded" not in fwd
        assert fwd["X-Forwarded-Proto"] == "http"
        assert fwd["X-Forwarded-Host"] == gw.url.removeprefix("http://")
        assert fwd["X-Request-ID"] == request_id
        # the caller's request id is kept
        async with http.get(f"{gw.url}/info", headers={"X-Request-ID": "abc-123"}) as r:
            assert r.headers["X-Request-ID"] == "abc-123"
        assert seen["headers"]["X-Request-ID"] == "abc-123"  # type: ignore[index]
    finally:
        await runner.cleanup()


async def test_bad_input_gets_a_json_error_and_nothing_is_forwarded(simulators, gateways, http):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], max_body_bytes=1024)
    cases = [
        ("POST", "/api/messages/send", b"{not json", 400, "not valid JSON"),
        ("GET", "/api/sessions/bad%20id/status", None, 400, "session_id"),
        (
            "POST",
            "/api/sessions",
            json.dumps({"session_id": "x" * 129}).encode(),
            400,
            "session_id",
        ),
        (
            "POST",
            "/api/sessions",
            json.dumps({"session_id": "ok", "workspace_id": "abc"}).encode(),
            400,
            "workspace_id",
        ),
        ("POST", "/api/sessions", json.dumps({"session_id": ["a"]}).encode(), 400, "session_id"),
        ("POST", "/api/messages/send", b'{"a": "' + b"x" * 2000 + b'"}', 413, ""),
    ]
    for method, path, body, status, words in cases:
        headers = {"Content-Type": "application/json"}
        async with http.request(method, f"{gw.url}{path}", data=body, headers=headers) as r:
            assert r.status == status, (path, await r.text())
            answer = await r.json()
            assert answer["success"] is False and words in answer["error"]
    assert sims[0].sessions == {}


async def test_json_the_fast_parser_refuses_is_still_read_as_python_reads_it(
    simulators, gateways, http
):
    """A lone surrogate (a cut emoji) or an out-of-range number is JSON to the instances."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    create = {"session_id": "s1", "api_key": API_KEY}
    async with http.post(f"{gw.url}/api/sessions", json=create) as r:
        assert r.status == 200
        holder = r.headers["X-WhatsApp-Instance"]
    body = (
        b'{"session_id": "s1", "api_key": "%s", "recipient_phone": "15550001", '
        b'"message": "cut \\ud83d", "n": 1e999}' % API_KEY.encode()
    )
    headers = {"Content-Type": "application/json"}
    async with http.post(f"{gw.url}/api/messages/send", data=body, headers=headers) as r:
        assert r.status == 200, await r.text()
        assert r.headers["X-WhatsApp-Instance"] == holder  # routed by the id in it


async def test_unreachable_instance_is_a_502_naming_it(gateways, http):
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateways([dead])
    gw.gw.fleet.instances[0].up = True  # as if it had just been up
    async with http.get(f"{gw.url}/info") as r:
        assert r.status == 502
        body = await r.json()
    assert body["instance"] == dead and dead in body["error"]


async def test_metrics_label_routes_not_sessions(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    await create(http, gw.url, "secret-session-42")
    send = {
        "session_id": "secret-session-42",
        "api_key": API_KEY,
        "recipient_phone": "628123456",
        "message": "hi",
    }
    async with http.post(f"{gw.url}/api/messages/send", json=send) as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/api/sessions/secret-session-42/status?api_key={API_KEY}"):
        pass
    async with http.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    assert "secret-session-42" not in text and "628123456" not in text and API_KEY not in text
    assert (
        'gateway_requests_total{method="POST",route="/api/messages/{action}",status="200",'
        f'upstream="{sims[0].url}"}} 1.0' in text
    )
    assert 'route="/api/sessions/{id}/{action}"' in text
    assert f'gateway_placements_total{{upstream="{sims[0].url}"}} 1.0' in text
    assert "gateway_request_duration_seconds_bucket" in text
    assert 'gateway_pin_cache_total{result="hit"}' in text
    assert f'gateway_instance_up{{upstream="{sims[1].url}"}} 1.0' in text
