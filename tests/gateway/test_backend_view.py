"""The backend keeps its sessions on the gateway: events and its table name ``public_url``.

blazz stores each event's ``X-Instance-Url`` (and reads the gateway's write-back) as the
session's instance, and calls that URL for sends. So by default both say the gateway's own
URL, the instance only alongside; ``backend_sees = instance`` keeps the instances' URLs.
Real gateways, simulators, Redis, MariaDB and workers' relay; the backend is a recording app.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from dev.ports import free_port
from gateway.decisions.account_rows import NOT_FOUND, UNKNOWN_URL, VERIFIED, WRONG, Row, judge
from gateway.decisions.view import BackendView
from gateway.shared.loader import load_settings
from gateway.shared.outbox import Incoming, Outbox
from gateway.shared.settings import SettingsError
from gateway.shared.signature import signed_headers
from tests.accounts import AccountsDB
from tests.gateway.test_admin import create
from tests.gateway.test_webhooks import FAST, SECRET, event, settled
from tests.gateway.test_write_back import backend_rows, nothing_pending, table_says
from tests.harness import REDIS_URL, eventually, serve
from tests.spawned import Spawned, gateway_env
from tests.support import raw_http
from workers.connections import redis_client
from workers.delivery import RelayConfig, WebhookRelay
from workers.metrics import WorkerMetrics

PUBLIC = "http://wa-gateway.internal:8080"
A, B = "http://127.0.0.1:3001", "http://127.0.0.1:3002"
UA = "WhatsApp-WebJS-Service/1.0"


# --- pure: what a row should say ------------------------------------------------------------


def test_the_backend_is_shown_the_gateway_with_the_instances_index():
    view = BackendView((A, B), PUBLIC)
    assert view.shown(B) == (PUBLIC, 1)
    assert view.shown("http://10.9.9.9:3001") == (PUBLIC, None)  # not configured: no index
    assert BackendView((A, B)).shown(B) == (B, 1)  # backend_sees = instance
    assert view.instance_of(PUBLIC, 1) == B
    assert view.instance_of("http://WA-Gateway.internal:8080/", 0) == A  # one place, spelled so
    assert view.instance_of(PUBLIC, 7) is None
    assert view.instance_of("http://localhost:3002", None) == B


def test_rows_are_judged_by_the_view():
    holders = {"here": [B], "moved": [A], "old": [B]}
    gateway = BackendView((A, B), PUBLIC)
    local = BackendView((A, B), "http://127.0.0.1:8080")

    def kind(view: BackendView, sid: str, url: str | None, index: int | None) -> tuple[Any, ...]:
        verdict = judge(Row(sid, url, index), holders, view, {})
        return verdict.kind, verdict.url, verdict.index

    assert kind(gateway, "here", PUBLIC, 1) == (VERIFIED, PUBLIC, 1)
    assert kind(gateway, "moved", PUBLIC, 1) == (WRONG, PUBLIC, 0)  # the index follows it
    assert kind(gateway, "old", B, 1) == (WRONG, PUBLIC, 1)  # an instance URL: now the gateway
    assert kind(gateway, "gone", PUBLIC, 0) == (NOT_FOUND, None, None)
    assert kind(gateway, "gone", "http://elsewhere:1", 0) == (UNKNOWN_URL, None, None)
    # localhost and 127.0.0.1 are one place: nothing to rewrite.
    assert kind(local, "here", "http://localhost:8080", 1) == (
        VERIFIED,
        "http://localhost:8080",
        1,
    )
    instance = BackendView((A, B))
    assert kind(instance, "here", "http://localhost:3002/", 1)[0] == VERIFIED


# --- settings -----------------------------------------------------------------------------


def settings_from(tmp_path: Path, **env: str) -> Any:
    toml = tmp_path / "g.toml"
    toml.write_text("")
    return load_settings({"GATEWAY_CONFIG": str(toml), **env})


def test_public_url_is_the_backends_own_base_url_for_its_client(tmp_path: Path):
    dotenv = tmp_path / ".env"
    dotenv.write_text(f"WHATSAPP_NODEJS_URL={PUBLIC}\nWHATSAPP_INSTANCES={A},{B}\n")
    s = settings_from(tmp_path, LARAVEL_ENV_FILE=str(dotenv))
    assert (s.public_url, s.shown_url) == (PUBLIC, PUBLIC)
    assert s.sources["public_url"].startswith(".env")
    own = settings_from(tmp_path, LARAVEL_ENV_FILE=str(dotenv), GATEWAY_PUBLIC_URL="http://gw:1")
    assert own.public_url == "http://gw:1"  # the gateway's own name wins


def test_without_public_url_it_is_made_from_the_listen_address(tmp_path: Path):
    s = settings_from(tmp_path, GATEWAY_HOST="0.0.0.0", GATEWAY_PORT="9090")
    assert s.shown_url == "http://127.0.0.1:9090"
    assert "GATEWAY_PUBLIC_URL" in s.sources["public_url"]  # check-config says what to set
    s = settings_from(tmp_path, GATEWAY_HOST="10.1.2.3", GATEWAY_BACKEND_SEES="instance")
    assert (s.public_url, s.shown_url) == ("", "")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WHATSAPP_NODEJS_URL": "http://localhost:3001"}, "public_url: 'http://localhost:3001'"),
        ({"GATEWAY_BACKEND_SEES": "both"}, "backend_sees: 'both' is not one of"),
        ({"GATEWAY_PUBLIC_URL": "gateway:8080"}, "public_url: 'gateway:8080' is not an http"),
    ],
)
def test_a_public_url_naming_an_instance_or_a_bad_view_is_refused(
    tmp_path: Path, env: dict[str, str], message: str
):
    with pytest.raises(SettingsError, match=message):
        settings_from(tmp_path, WHATSAPP_INSTANCES=f"{A},{B}", **env)


def test_an_instance_url_is_fine_when_the_backend_is_to_see_instances(tmp_path: Path):
    s = settings_from(
        tmp_path,
        WHATSAPP_INSTANCES=f"{A},{B}",
        WHATSAPP_NODEJS_URL=A,
        GATEWAY_BACKEND_SEES="instance",
    )
    assert s.shown_url == ""


# --- the table ------------------------------------------------------------------------------


async def test_the_write_back_names_the_gateway_and_keeps_the_instance_in_the_index(
    simulators, gateways, http, accounts_db: AccountsDB
):
    sims = await simulators(2)
    urls = [s.url for s in sims]
    gw = await gateways(urls, mysql_dsn=accounts_db.dsn, backend_sees="gateway", public_url=PUBLIC)
    await backend_rows(accounts_db, ["v-1", "v-2", "v-3"])
    # A row the backend wrote with the gateway spelled otherwise is left as it is.
    await accounts_db.insert("v-4", "http://WA-GATEWAY.internal:8080/", 0)
    # v-4 first: on the first instance, as its row says.
    placed = {sid: await create(http, gw, sid) for sid in ("v-4", "v-1", "v-2", "v-3")}
    expected = {sid: (PUBLIC, urls.index(url)) for sid, url in placed.items() if sid != "v-4"}
    await eventually(lambda: table_says(accounts_db, expected))
    await eventually(lambda: nothing_pending(gw))
    assert (await accounts_db.where())["v-4"] == ("http://WA-GATEWAY.internal:8080/", 0)
    assert placed["v-4"] == urls[0]
    # The admin's drift view counts the gateway's rows for the instance of their index.
    assert gw.gw.database is not None
    counts = await gw.gw.database.table.active_counts()
    assert counts == {u: sum(1 for x in placed.values() if x == u) for u in set(placed.values())}


# --- events -------------------------------------------------------------------------------


async def recording_backend(teardown, seen: list[tuple[dict[str, str], str]]) -> str:  # type: ignore[no-untyped-def]
    async def webhook(request: web.Request) -> web.Response:
        seen.append((dict(request.headers), request.remote or ""))
        return web.json_response({"status": "received"})

    app = web.Application()
    app.router.add_post("/api/whatsapp/webhooks/webjs", webhook)
    runner, url = await serve(app)
    teardown.push_async_callback(runner.cleanup)
    return url


async def deliver(backend: str, gw: Any) -> None:
    """Run the workers' relay to ``backend`` until the gateway's outbox is empty."""
    client = redis_client(REDIS_URL)
    config = RelayConfig(backend, SECRET, gw.gw.settings.key_prefix, **FAST)
    relay = WebhookRelay(config, client, WorkerMetrics())
    task = asyncio.create_task(relay.run())
    try:
        await settled(Outbox(client, gw.gw.settings.key_prefix))
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()


async def signed_post(http, gw, body: bytes, instance: str, **headers: str) -> int:  # type: ignore[no-untyped-def]
    sent = {
        "Content-Type": "application/json",
        "X-Instance-Url": instance,
        **signed_headers(SECRET, body, time.time()),
        **headers,
    }
    async with http.post(f"{gw.url}/api/whatsapp/webhooks/webjs", data=body, headers=sent) as r:
        return r.status


@pytest.mark.parametrize("sees", ["gateway", "instance"])
async def test_events_name_the_gateway_and_the_instance_behind_it(
    sees, simulators, gateways, http, teardown
):
    sims = await simulators(2)
    urls = [s.url for s in sims]
    gw = await gateways(urls, hmac_secret=SECRET, backend_sees=sees, public_url=PUBLIC)
    seen: list[tuple[dict[str, str], str]] = []
    backend = await recording_backend(teardown, seen)
    as_it_writes_itself = urls[1].replace("127.0.0.1", "localhost")
    ready = event("session_ready", "ev-1", 1, status="connected")
    assert await signed_post(http, gw, ready, as_it_writes_itself, **{"User-Agent": UA}) == 200
    await deliver(backend, gw)
    [(headers, _)] = seen
    assert headers["User-Agent"] == UA  # the instance's, not the relay's
    assert headers["X-Forwarded-For"] == "127.0.0.1"  # the instance's address
    if sees == "gateway":
        assert headers["X-Instance-Url"] == PUBLIC
        assert headers["X-WhatsApp-Instance"] == urls[1]
        assert headers["X-WhatsApp-Instance-Index"] == "1"
    else:
        assert headers["X-Instance-Url"] == as_it_writes_itself  # as it was sent
        assert "X-WhatsApp-Instance" not in headers


async def test_an_event_kept_before_the_upgrade_goes_out_as_it_came(
    simulators, gateways, http, teardown
):
    """An event in the outbox without kept headers (queued by an older gateway)."""
    sims = await simulators(1)
    gw = await gateways([sims[0].url], hmac_secret=SECRET)
    seen: list[tuple[dict[str, str], str]] = []
    backend = await recording_backend(teardown, seen)
    client = redis_client(REDIS_URL)
    try:
        outbox = Outbox(client, gw.gw.settings.key_prefix)
        body = event("session_ready", "old-1", 1)
        old = Incoming("/api/whatsapp/webhooks/webjs", body, A, "application/json", "", "old-1")
        await outbox.receive(old, time.time(), 60)
    finally:
        await client.aclose()
    await deliver(backend, gw)
    [(headers, _)] = seen
    assert headers["X-Instance-Url"] == A


async def test_header_bytes_that_are_not_utf8_are_kept_as_text_never_a_500(
    simulators, gateways, http, teardown
):
    """An X-Instance-Url or User-Agent with bytes that are not UTF-8 (here latin-1 é, ÿ)."""
    sims = await simulators(1)
    gw = await gateways(
        [sims[0].url], hmac_secret=SECRET, public_url=PUBLIC, backend_sees="gateway"
    )
    seen: list[tuple[dict[str, str], str]] = []
    backend = await recording_backend(teardown, seen)
    body = event("session_ready", "raw-1", 1)
    headers = {
        "Content-Type": "application/json",
        **signed_headers(SECRET, body, time.time()),
        "X-Instance-Url": "http://h\xe9:3001/",
        "User-Agent": "caf\xe9 \xff",
        "X-Forwarded-For": "10.0.0.9\xff",
    }
    reply = await raw_http(gw.url, "/api/whatsapp/webhooks/webjs", "POST", headers, body)
    assert reply.status == 200, reply.body
    await deliver(backend, gw)
    [(delivered, _)] = seen
    assert delivered["User-Agent"] == "caf\ufffd \ufffd"
    assert delivered["X-WhatsApp-Instance"] == "http://h\ufffd:3001/"  # as sent, made text
    assert delivered["X-Forwarded-For"] == "10.0.0.9\ufffd, 127.0.0.1"


async def test_a_gateway_without_public_url_says_at_start_up_what_the_backend_is_told(
    redis_prefix: str,
):
    port = free_port()
    env = gateway_env([f"http://127.0.0.1:{free_port()}"], redis_prefix, GATEWAY_PORT=str(port))
    env["GATEWAY_BACKEND_SEES"] = "gateway"  # and no GATEWAY_PUBLIC_URL, no WHATSAPP_NODEJS_URL
    gateway = await Spawned.start("gateway", "--log-format", "json", env=env)
    try:
        await gateway.logged(
            lambda records: any(
                r["level"] == "WARNING"
                and f"sessions live at http://127.0.0.1:{port}" in r["message"]
                and "GATEWAY_PUBLIC_URL" in r["message"]
                for r in records
            )
        )
    finally:
        await gateway.stop()
