"""The instances' own calls to the backend (restore at start-up, chat sync) go on to it."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dev.ports import free_port
from gateway.shared.signature import signed_headers
from tests.harness import API_KEY, sample, serve

SECRET = "relay-secret"
UA = "WhatsApp-WebJS-Service/1.0"


async def backend(teardown, seen: list[web.Request], bodies: list[bytes]) -> str:  # type: ignore[no-untyped-def]
    async def active(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.json_response({"sessions": [{"session_id": "s1"}]}, headers={"X-Backend": "yes"})

    async def sync(request: web.Request) -> web.Response:
        seen.append(request)
        bodies.append(await request.read())
        return web.json_response({"message": "chats is required"}, status=422)

    app = web.Application()
    app.router.add_get("/api/whatsapp/accounts/active", active)
    app.router.add_post("/api/whatsapp/chats/sync", sync)
    runner, url = await serve(app)
    teardown.push_async_callback(runner.cleanup)
    return url


@dataclass
class Relayed:
    """A gateway with a recording backend behind it."""

    gw: Any
    sim: Any
    seen: list[web.Request]
    bodies: list[bytes]


@pytest.fixture
async def relayed(simulators, gateways, teardown) -> Relayed:  # type: ignore[no-untyped-def]
    seen: list[web.Request] = []
    bodies: list[bytes] = []
    url = await backend(teardown, seen, bodies)
    sims = await simulators(1)
    gw = await gateways([sims[0].url], backend_url=url, hmac_secret=SECRET)
    return Relayed(gw, sims[0], seen, bodies)


async def test_an_instances_restore_query_reaches_the_backend_and_its_answer_comes_back(
    relayed, http
):
    gw, seen, sims = relayed.gw, relayed.seen, [relayed.sim]
    headers = {"X-API-Key": API_KEY, "User-Agent": UA}
    async with http.get(f"{gw.url}/api/whatsapp/accounts/active?limit=5", headers=headers) as r:
        assert r.status == 200 and r.headers["X-Backend"] == "yes"
        assert (await r.json())["sessions"] == [{"session_id": "s1"}]
    [request] = seen
    assert request.path_qs == "/api/whatsapp/accounts/active?limit=5"
    assert request.headers["User-Agent"] == UA  # the instance's own, for the backend's logs
    assert request.headers["X-API-Key"] == API_KEY
    assert request.headers["X-Forwarded-For"] == "127.0.0.1"
    assert not [s for s in sims[0].seen if s.path_qs.startswith("/api/whatsapp")]
    assert sample(gw, "gateway_backend_calls_total", result="forwarded") == 1


async def test_a_signed_chat_sync_passes_byte_for_byte_and_gets_the_backends_status(relayed, http):
    gw, seen, bodies = relayed.gw, relayed.seen, relayed.bodies
    body = json.dumps({"session_id": "s1", "chats": []}, indent=1).encode()
    headers = {**signed_headers(SECRET, body, time.time()), "Content-Type": "application/json"}
    async with http.post(f"{gw.url}/api/whatsapp/chats/sync", data=body, headers=headers) as r:
        assert r.status == 422 and (await r.json()) == {"message": "chats is required"}
    assert bodies == [body]
    assert seen[0].headers["X-HMAC-Signature"] == headers["X-HMAC-Signature"]


async def test_a_call_without_proof_of_an_instance_reaches_nothing(
    simulators, gateways, http, teardown
):
    seen: list[web.Request] = []
    url = await backend(teardown, seen, [])
    sims = await simulators(1)
    gw = await gateways([sims[0].url], backend_url=url, hmac_secret=SECRET)
    body = b'{"session_id": "s1"}'
    forged = {**signed_headers("not-the-secret", body, time.time())}
    stale = signed_headers(SECRET, body, time.time() - 3600)
    attempts = [
        ("GET", "/api/whatsapp/accounts/active", {}, b""),
        ("GET", "/api/whatsapp/accounts/active", {"X-API-Key": "wrong"}, b""),
        ("GET", "/api/whatsapp/accounts/active", {"X-API-Key": "t\udcffx"}, b""),
        ("POST", "/api/whatsapp/chats/sync", forged, body),
        ("POST", "/api/whatsapp/chats/sync", stale, body),
    ]
    for method, path, headers, data in attempts:
        safe = {
            k: v.encode("utf-8", "surrogateescape").decode("latin-1") for k, v in headers.items()
        }
        async with http.request(method, f"{gw.url}{path}", headers=safe, data=data) as r:
            assert r.status == 401, (path, headers)
            assert (await r.json())["success"] is False
    assert seen == []
    assert sample(gw, "gateway_backend_calls_total", result="refused") == len(attempts)


async def test_a_backend_that_is_down_or_unset_is_said_so(simulators, gateways, http):
    sims = await simulators(1)
    down = await gateways([sims[0].url], backend_url=f"http://127.0.0.1:{free_port()}")
    headers = {"X-API-Key": API_KEY}
    async with http.get(f"{down.url}/api/whatsapp/accounts/active", headers=headers) as r:
        assert r.status == 502 and r.headers["X-Gateway-Outcome"] == "not-sent"
    unset = await gateways([sims[0].url])
    async with http.get(f"{unset.url}/api/whatsapp/accounts/active", headers=headers) as r:
        assert r.status == 404 and "backend_url" in (await r.json())["error"]


async def test_backend_url_is_checked(tmp_path):
    from gateway.shared.loader import load_settings
    from gateway.shared.settings import SettingsError

    config = tmp_path / "gateway.toml"
    config.write_text("")
    ok = load_settings({"GATEWAY_CONFIG": str(config), "LARAVEL_URL": "http://backend:8000"})
    assert ok.backend_url == "http://backend:8000"
    try:
        load_settings({"GATEWAY_CONFIG": str(config), "LARAVEL_URL": "backend:8000"})
    except SettingsError as exc:
        assert "backend_url" in str(exc)
    else:
        raise AssertionError("a URL without a scheme was taken")


async def test_the_relay_is_reached_through_the_entry_point(simulators, gateways, teardown):
    """A raw keep-alive connection: an instance API call, then a backend call on it."""
    seen: list[web.Request] = []
    url = await backend(teardown, seen, [])
    sims = await simulators(1)
    gw = await gateways([sims[0].url], backend_url=url)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{gw.url}/health") as r:
            assert r.status == 200
        async with http.get(
            f"{gw.url}/api/whatsapp/accounts/active", headers={"X-API-Key": API_KEY}
        ) as r:
            assert r.status == 200
    assert len(seen) == 1


def test_an_instance_list_naming_the_gateway_itself_is_refused(tmp_path):
    from gateway.shared.loader import load_settings
    from gateway.shared.settings import SettingsError

    config = tmp_path / "gateway.toml"
    config.write_text("")
    env = {"GATEWAY_CONFIG": str(config), "GATEWAY_PORT": "8080"}
    for listed in ("http://127.0.0.1:8080", "http://localhost:8080/"):
        try:
            load_settings({**env, "WHATSAPP_INSTANCE_COUNT": "1", "WHATSAPP_INSTANCE_1": listed})
        except SettingsError as exc:
            assert "is the gateway itself" in str(exc)
        else:
            raise AssertionError(f"{listed} was taken")
    fine = load_settings({**env, "WHATSAPP_INSTANCES": "http://127.0.0.1:3001"})
    assert fine.instances == ("http://127.0.0.1:3001",)
