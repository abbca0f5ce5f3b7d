"""The console's rules over plain HTTP: login, cookie, CSRF, origin, hostile input, the
OpenAPI document; against real gateways, simulators and Redis."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from openapi_spec_validator import validate

from gateway.console.session import COOKIE, LOGIN_LIMIT
from gateway.shared.laravel.failed import RedisFailedStore
from gateway.shared.laravel.jobs import Job, encode, new_payload
from gateway.shared.laravel.queues import QueueKeys
from gateway.shared.outbox import Incoming, Outbox
from tests.harness import API_KEY, RunningGateway, Sim

TOKEN = "console-admin-secret"


@pytest.fixture
async def fleet(
    simulators: Callable[..., Awaitable[list[Sim]]],
    gateways: Callable[..., Awaitable[RunningGateway]],
) -> tuple[list[Sim], RunningGateway]:
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    return sims, gw


async def login(
    http: aiohttp.ClientSession, gw: RunningGateway, token: str = TOKEN, **headers: str
) -> tuple[int, Any, aiohttp.ClientResponse]:
    async with http.post(f"{gw.url}/console/login", json={"token": token}, headers=headers) as resp:
        return resp.status, await resp.json(), resp


async def session(http: aiohttp.ClientSession, gw: RunningGateway) -> tuple[str, str]:
    """A logged-in console: the cookie header and the page's CSRF token."""
    status, _, resp = await login(http, gw)
    assert status == 200
    cookie = f"{COOKIE}={resp.cookies[COOKIE].value}"
    async with http.get(f"{gw.url}/console/", headers={"Cookie": cookie}) as page:
        html = await page.text()
    match = re.search(r'name="csrf-token" content="([^"]+)"', html)
    assert match, html
    return cookie, match.group(1)


async def call(
    http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, f"{gw.url}{path}", **kwargs) as resp:
        assert resp.content_type == "application/json", await resp.text()
        return resp.status, await resp.json()


async def test_the_console_is_off_without_an_admin_token(
    simulators: Callable[..., Awaitable[list[Sim]]],
    gateways: Callable[..., Awaitable[RunningGateway]],
    http: aiohttp.ClientSession,
) -> None:
    [sim] = await simulators(1)
    gw = await gateways([sim.url])
    for method, path in (
        ("GET", "/console/"),
        ("POST", "/console/login"),
        ("GET", "/gateway/queues"),
    ):
        status, body = await call(http, gw, method, path, json={"token": ""})
        assert status == 404 and body["success"] is False, (path, body)


async def test_login_sets_a_strict_httponly_cookie_and_the_page_carries_csrf_not_the_token(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    async with http.get(f"{gw.url}/console/") as resp:  # no session: the login form
        page = await resp.text()
        assert resp.status == 200 and 'id="login"' in page
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp
        assert "unsafe-inline" not in csp and "frame-ancestors 'none'" in csp
    async with http.get(f"{gw.url}/console", allow_redirects=False) as resp:
        assert (resp.status, resp.headers["Location"]) == (308, "/console/")
    status, body, resp = await login(http, gw)
    assert status == 200 and body["success"] is True
    set_cookie = resp.headers["Set-Cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    assert "Secure" not in set_cookie  # plain http on loopback
    cookie, csrf = await session(http, gw)
    async with http.get(f"{gw.url}/console/", headers={"Cookie": cookie}) as page:
        html = await page.text()
    assert 'id="instances"' in html and csrf in html and TOKEN not in html
    _, _, forwarded = await login(http, gw, **{"X-Forwarded-Proto": "https"})
    assert "Secure" in forwarded.headers["Set-Cookie"]
    for name in ("console.js", "console.css", "login.js"):
        async with http.get(f"{gw.url}/console/static/{name}") as resp:
            text = await resp.text()
            assert resp.status == 200 and "Content-Security-Policy" in resp.headers
            assert "http://" not in text and "https://" not in text  # nothing from elsewhere


async def test_a_wrong_token_is_refused_and_repeated_ones_are_stopped(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    status, body, resp = await login(http, gw, token="nope")
    assert (status, body["error"]) == (401, "Wrong admin token")
    assert "Set-Cookie" not in resp.headers
    for _ in range(LOGIN_LIMIT - 1):
        assert (await login(http, gw, token="still-wrong"))[0] == 401
    status, body, _ = await login(http, gw)  # now even the right one waits
    assert status == 429 and "Too many" in body["error"]


async def test_hostile_logins_get_clear_json_errors(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    url = f"{gw.url}/console/login"
    cases: list[tuple[dict[str, Any], int]] = [
        ({"data": b"{not json", "headers": {"Content-Type": "application/json"}}, 400),
        ({"data": b"[1, 2]", "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": {"token": 5}}, 400),
        ({"data": b"x" * 100_000, "headers": {"Content-Type": "application/json"}}, 413),
        ({"data": b"[" * 50_000, "headers": {"Content-Type": "application/json"}}, 413),
        ({"data": b"[" * 3000, "headers": {"Content-Type": "application/json"}}, 400),
        ({"json": {"token": TOKEN}, "headers": {"Origin": "http://evil.example"}}, 403),
        (
            {
                "data": "token=\udcff".encode("utf-8", "surrogatepass"),
                "headers": {"Content-Type": "application/x-www-form-urlencoded"},
            },
            401,
        ),
    ]
    for kwargs, expected in cases:
        async with http.post(url, **kwargs) as resp:
            assert resp.status == expected, (kwargs, resp.status, await resp.text())
            body = await resp.json()
            assert body["success"] is False and body["error"]


async def test_a_form_login_redirects_to_the_page(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    async with http.post(
        f"{gw.url}/console/login", data={"token": TOKEN}, allow_redirects=False
    ) as resp:
        assert resp.status == 303 and resp.headers["Location"] == "/console/"
        assert COOKIE in resp.cookies


async def test_changes_need_the_csrf_token_and_this_origin(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    sims, gw = fleet
    cookie, csrf = await session(http, gw)
    origin = gw.url
    drain = "/gateway/instances/0/drain"
    status, body = await call(http, gw, "GET", "/gateway/instances", headers={"Cookie": cookie})
    assert status == 200 and [i["url"] for i in body["instances"]] == [s.url for s in sims]
    refused = [
        {"Cookie": cookie, "Origin": origin},  # no CSRF token
        {"Cookie": cookie, "Origin": origin, "X-CSRF-Token": "forged"},
        {"Cookie": cookie, "X-CSRF-Token": csrf},  # no Origin
        {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": "http://evil.example"},
    ]
    for headers in refused:
        status, body = await call(http, gw, "POST", drain, headers=headers)
        assert status == 403, (headers, body)
    assert gw.gw.fleet.instances[0].draining is False
    ok = {"Cookie": cookie, "X-CSRF-Token": csrf, "Origin": origin}
    status, body = await call(http, gw, "POST", drain, headers=ok)
    assert status == 200 and body["draining"] is True
    status, body = await call(http, gw, "GET", "/gateway/distribution", headers={"Cookie": cookie})
    assert body["next"]["url"] == sims[1].url  # the drained one gets no new session
    # the Bearer token needs no CSRF token: it is never sent by a browser on its own
    status, _ = await call(
        http,
        gw,
        "POST",
        "/gateway/instances/0/undrain",
        headers={"Authorization": f"Bearer {TOKEN}"},
    )
    assert status == 200


async def test_no_cookie_a_bad_cookie_and_a_closed_session_get_401(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    for headers in ({}, {"Cookie": f"{COOKIE}=made-up"}, {"Cookie": f"{COOKIE}={'x' * 5000}"}):
        status, body = await call(http, gw, "GET", "/gateway/queues", headers=headers)
        assert status == 401 and "console session" in body["error"]
    cookie, csrf = await session(http, gw)
    assert (await call(http, gw, "GET", "/gateway/queues", headers={"Cookie": cookie}))[0] == 200
    headers = {"Cookie": cookie, "X-CSRF-Token": "wrong", "Origin": gw.url}
    assert (await call(http, gw, "POST", "/console/logout", headers=headers))[0] == 403
    headers["X-CSRF-Token"] = csrf
    status, _ = await call(http, gw, "POST", "/console/logout", headers=headers)
    assert status == 200
    status, _ = await call(http, gw, "GET", "/gateway/queues", headers={"Cookie": cookie})
    assert status == 401


async def test_a_session_works_on_every_gateway_process_until_the_token_changes(
    fleet: tuple[list[Sim], RunningGateway],
    gateways: Callable[..., Awaitable[RunningGateway]],
    http: aiohttp.ClientSession,
) -> None:
    sims, gw = fleet
    other = await gateways([s.url for s in sims], admin_token=TOKEN)
    renewed = await gateways([s.url for s in sims], admin_token="a-new-token")
    cookie, _ = await session(http, gw)
    assert (await call(http, other, "GET", "/gateway/instances", headers={"Cookie": cookie}))[
        0
    ] == 200
    status, _ = await call(http, renewed, "GET", "/gateway/instances", headers={"Cookie": cookie})
    assert status == 401


async def test_hostile_admin_input_gets_clear_json_errors(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    auth = {"Authorization": f"Bearer {TOKEN}"}
    cases = [
        ("GET", "/gateway/failed?limit=abc", {}, 400),
        ("GET", "/gateway/failed?limit=99999999999", {}, 400),
        ("GET", "/gateway/failed?offset=-1", {}, 400),
        ("GET", "/gateway/failed?queue=a%20b", {}, 400),
        ("GET", "/gateway/failed/..%2F..", {}, 400),
        ("GET", f"/gateway/failed/{'x' * 300}", {}, 400),
        ("GET", "/gateway/failed/no-such", {}, 404),
        ("POST", "/gateway/failed/no-such/retry", {}, 404),
        ("POST", "/gateway/failed/x/retry", {"data": b"{oops"}, 400),
        ("POST", "/gateway/failed/x/retry", {"json": {"resend": "yes"}}, 400),
        ("POST", "/gateway/failed/x/retry", {"data": b"x" * 100_000}, 413),
        ("DELETE", "/gateway/failed/no-such", {}, 404),
        ("GET", "/gateway/dead-letters/no-such", {}, 404),
        ("POST", "/gateway/dead-letters/no-such/retry", {}, 404),
        ("DELETE", "/gateway/dead-letters/no-such", {}, 404),
        ("GET", "/gateway/sessions?limit=0", {}, 400),
        ("GET", "/gateway/sessions?instance=7", {}, 404),
        ("PUT", "/gateway/sessions/s1", {"data": b"[" * 100_000}, 413),
        ("GET", "/console/static/..%2Fsession.py", {}, 404),
        ("GET", "/console/static/nothing.js", {}, 404),
        ("GET", "/console/nowhere", {}, 404),
    ]
    for method, path, kwargs, expected in cases:
        status, body = await call(http, gw, method, path, headers=auth, **kwargs)
        assert status == expected, (method, path, status, body)
        assert body["success"] is False and body["error"], (path, body)
    # a large body within the limit is read whole, however it arrives
    sims = fleet[0]
    padded = {"instance": sims[1].url, "pad": "x" * 60_000}
    status, body = await call(http, gw, "PUT", "/gateway/sessions/s1", headers=auth, json=padded)
    assert (status, body["instance"]) == (200, sims[1].url)
    status, body, _ = await login(http, gw, token="y" * 4000)
    assert status == 401


async def test_failed_jobs_through_the_api_are_the_stores(
    fleet: tuple[list[Sim], RunningGateway],
    http: aiohttp.ClientSession,
    redis_prefix: str,
) -> None:
    _, gw = fleet
    auth = {"Authorization": f"Bearer {TOKEN}"}
    redis = gw.gw.pins.link.redis
    store = RedisFailedStore(redis, redis_prefix, "redis", "UTC")
    ids = []
    for n, queue in enumerate(("whatsapp-high", "whatsapp-high", "messaging")):
        payload = new_payload("whatsapp.send_message", {"n": n})
        ids.append(payload["uuid"])
        raw = encode(payload)
        await redis.zadd(QueueKeys(redis_prefix, queue).reserved, {raw: 0})
        exception = "POST /api/messages/send answered 400: " + json.dumps(
            {"success": False, "error": "Session not connected", "detail": "x" * 200}
        )
        await store.record(Job.reserved(queue, raw, True, raw), exception)
    status, body = await call(
        http, gw, "GET", "/gateway/failed?queue=whatsapp-high&limit=1", headers=auth
    )
    assert status == 200 and body["total"] == 2 and len(body["jobs"]) == 1
    [job] = body["jobs"]
    assert job["id"] == ids[1]  # newest first
    assert job["exception"] == "POST /api/messages/send answered 400: Session not connected"
    status, body = await call(http, gw, "GET", f"/gateway/failed/{ids[0]}", headers=auth)
    assert json.loads(body["job"]["exception"].split(": ", 1)[1])["detail"] == "x" * 200
    status, body = await call(http, gw, "POST", f"/gateway/failed/{ids[0]}/retry", headers=auth)
    assert (status, body["retried"]) == (200, [ids[0]])
    [pushed] = await redis.lrange(QueueKeys(redis_prefix, "whatsapp-high").list, 0, -1)
    assert json.loads(pushed)["uuid"] == ids[0] and json.loads(pushed)["attempts"] == 0
    status, body = await call(http, gw, "DELETE", f"/gateway/failed/{ids[2]}", headers=auth)
    assert status == 200
    status, body = await call(http, gw, "GET", "/gateway/queues", headers=auth)
    high = next(q for q in body["queues"] if q["queue"] == "whatsapp-high")
    assert (high["waiting"], body["failed"]) == (1, 1)


async def test_the_openapi_document_is_valid_and_describes_every_admin_route(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    async with http.get(f"{gw.url}/console/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    validate(doc)
    routes = {
        (r.method.lower(), r.resource.canonical)
        for r in gw.app.router.routes()
        if r.resource is not None
        and r.resource.canonical.startswith("/gateway/")
        and "{tail}" not in r.resource.canonical
        and r.method != "HEAD"
    }
    described = {(m, p) for p, ops in doc["paths"].items() for m in ops}
    assert routes == described
    # and the calls exist: an undescribed admin call falls to the catch-all's 404
    status, _ = await call(
        http, gw, "GET", "/gateway/nothing", headers={"Authorization": f"Bearer {TOKEN}"}
    )
    assert status == 404
    assert API_KEY  # the fleet's instances are the simulators'


async def test_dead_letters_through_the_api_are_the_outboxs(
    fleet: tuple[list[Sim], RunningGateway], http: aiohttp.ClientSession
) -> None:
    _, gw = fleet
    auth = {"Authorization": f"Bearer {TOKEN}"}
    outbox = Outbox(gw.gw.pins.link.redis, gw.gw.settings.key_prefix)
    for n in range(2):
        event = Incoming(
            "/webjs",
            b'{"event": "session_ready"}',
            "",
            "application/json",
            "session_ready",
            f"lane-{n}",
        )
        await outbox.receive(event, time.time(), dedup_window=0)
        [delivery], _ = await outbox.take(1, 30, time.time())
        await outbox.dead(delivery, time.time(), "500", "the backend answered 500")
    _, body = await call(http, gw, "GET", "/gateway/dead-letters", headers=auth)
    first, second = body["dead_letters"]
    assert (first["event"], first["error"], first["status"]) == (
        "session_ready",
        "the backend answered 500",
        "500",
    )
    _, body = await call(http, gw, "GET", f"/gateway/dead-letters/{first['id']}", headers=auth)
    assert body["dead_letter"]["body"] == '{"event": "session_ready"}'
    path = f"/gateway/dead-letters/{first['id']}/retry"
    assert (await call(http, gw, "POST", path, headers=auth))[0] == 200
    assert (await outbox.backlog(time.time())).waiting == 1  # back in its lane
    path = f"/gateway/dead-letters/{second['id']}"
    assert (await call(http, gw, "DELETE", path, headers=auth))[0] == 200
    assert (await call(http, gw, "DELETE", path, headers=auth))[0] == 404
    assert await outbox.dead_letters() == []
