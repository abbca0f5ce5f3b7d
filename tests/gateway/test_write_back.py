"""Every placement and move reaches the backend's table, off the request path.

Real gateways, simulators, Redis and MariaDB; each test has its own database holding the
backend's ``whatsapp_accounts`` table, whose rows the "backend" inserts with no instance.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Iterable
from typing import Any

import redis.asyncio as aioredis

from gateway.accounts.pending import ENQUEUE
from gateway.lifecycle.reload import reload
from tests.accounts import AccountsDB
from tests.gateway.test_admin import TOKEN, admin, create, move_directly, status_via
from tests.gateway.test_webhooks import SECRET, event, post
from tests.harness import API_KEY, RedisServer, RunningGateway, eventually, sample
from tests.relay import Relay


async def backend_rows(db: AccountsDB, sids: Iterable[str], **fields: Any) -> None:
    """Rows as the backend inserts them: webjs, connected, no instance yet."""
    await db.insert_many(
        (
            sid,
            fields.get("url"),
            fields.get("index"),
            fields.get("provider", "webjs"),
            "connected",
            fields.get("deleted", False),
            1,
        )
        for sid in sids
    )


def index_of(gw: RunningGateway, url: str) -> int:
    return gw.gw.settings.instances.index(url)


async def table_says(db: AccountsDB, expected: dict[str, tuple[str, int]]) -> bool:
    where = await db.where()
    return all(where.get(sid) == value for sid, value in expected.items())


async def nothing_pending(gw: RunningGateway) -> bool:
    assert gw.gw.database is not None
    count, _ = await gw.gw.database.pending.stats()
    return count == 0


async def test_a_created_session_is_written_with_its_instance_url_and_index(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn)
    sids = [f"new-{i}" for i in range(6)]
    await backend_rows(accounts_db, sids)
    expected = {}
    for sid in sids:
        url = await create(http, gw, sid)
        expected[sid] = (url, index_of(gw, url))
    assert {url for url, _ in expected.values()} == {s.url for s in sims}  # all three used
    await eventually(lambda: table_says(accounts_db, expected))
    await eventually(lambda: nothing_pending(gw))  # acknowledged: counted, too
    assert sample(gw, "gateway_db_writes_total", result="written") == len(sids)
    assert sample(gw, "gateway_db_up") == 1


async def test_a_rediscovered_move_is_written(simulators, gateways, http, accounts_db):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn)
    await backend_rows(accounts_db, ["moved-1"])
    first = await create(http, gw, "moved-1")
    other = next(s.url for s in sims if s.url != first)
    await eventually(lambda: table_says(accounts_db, {"moved-1": (first, index_of(gw, first))}))
    await move_directly(http, "moved-1", first, other)  # the instance restarted elsewhere
    assert await status_via(http, gw, "moved-1") == other  # found again inline
    await eventually(lambda: table_says(accounts_db, {"moved-1": (other, index_of(gw, other))}))
    assert await accounts_db.writes() == [
        ("moved-1", first, index_of(gw, first)),
        ("moved-1", other, index_of(gw, other)),
    ]


async def test_a_reconciliation_correction_is_written(simulators, gateways, http, accounts_db):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, admin_token=TOKEN)
    await backend_rows(accounts_db, ["rc-1"])
    first = await create(http, gw, "rc-1")
    other = next(s.url for s in sims if s.url != first)
    await move_directly(http, "rc-1", first, other)
    status, body = await admin(http, gw, "POST", "/gateway/reconcile")
    assert status == 200 and [c["kind"] for c in body["corrections"]] == ["moved"]
    await eventually(lambda: table_says(accounts_db, {"rc-1": (other, index_of(gw, other))}))


async def test_reconciliation_fixes_rows_the_backend_got_wrong(
    simulators, gateways, http, accounts_db
):
    """Pins right, table wrong (a row written after the create, naming the gateway)."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, admin_token=TOKEN)
    where = {sid: await create(http, gw, sid) for sid in ("late-1", "late-2", "late-3")}
    await eventually(lambda: nothing_pending(gw))  # no row yet: nothing written
    await backend_rows(accounts_db, ["late-1", "late-2"], url=gw.url, index=0)
    await backend_rows(accounts_db, ["late-3"], url=where["late-3"], index=0)  # index off
    _, body = await admin(http, gw, "POST", "/gateway/reconcile")
    assert body["corrections"] == []  # every pin was right
    expected = {sid: (url, index_of(gw, url)) for sid, url in where.items()}
    await eventually(lambda: table_says(accounts_db, expected))


async def test_an_admin_move_is_written(simulators, gateways, http, accounts_db):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, admin_token=TOKEN)
    await backend_rows(accounts_db, ["adm-1"])
    await create(http, gw, "adm-1")
    status, _ = await admin(
        http, gw, "PUT", "/gateway/sessions/adm-1", json={"instance": sims[2].url}
    )
    assert status == 200
    await eventually(lambda: table_says(accounts_db, {"adm-1": (sims[2].url, 2)}))


async def test_a_session_ready_webhook_from_another_instance_is_written(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, hmac_secret=SECRET)
    await backend_rows(accounts_db, ["wh-1"])
    first = await create(http, gw, "wh-1")
    other = next(s.url for s in sims if s.url != first)
    next(s for s in sims if s.url == first).sessions.pop("wh-1")  # restored elsewhere
    async with http.post(f"{other}/api/sessions/wh-1/restore", json={"api_key": API_KEY}):
        pass
    ready = event("session_ready", "wh-1", 1, status="connected")
    assert (await post(http, gw.url, ready, instance=other))[0] == 200  # restored elsewhere
    await eventually(lambda: table_says(accounts_db, {"wh-1": (other, index_of(gw, other))}))


async def test_a_reloaded_gateway_writes_through_its_new_writer(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn)
    await backend_rows(accounts_db, ["rl-1", "rl-2"])
    first = await create(http, gw, "rl-1")
    old = gw.gw.database
    settings = gw.gw.settings
    assert await reload(gw.app, lambda: settings)  # SIGHUP: a new gateway, the same metrics
    assert gw.gw.database is not old
    second = await create(http, gw, "rl-2")
    expected = {"rl-1": (first, index_of(gw, first)), "rl-2": (second, index_of(gw, second))}
    await eventually(lambda: table_says(accounts_db, expected))


async def test_meta_and_soft_deleted_rows_are_never_touched(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, admin_token=TOKEN)
    await backend_rows(accounts_db, ["meta-1"], provider="meta")
    await backend_rows(accounts_db, ["gone-1"], url="http://old:1", index=3, deleted=True)
    await backend_rows(accounts_db, ["live-1"])
    before = await accounts_db.snapshot()
    for sid in ("meta-1", "gone-1", "live-1"):
        first = await create(http, gw, sid)
        await admin(http, gw, "PUT", f"/gateway/sessions/{sid}", json={"instance": first})
    await admin(http, gw, "POST", "/gateway/reconcile")
    await eventually(lambda: table_says(accounts_db, {"live-1": (first, index_of(gw, first))}))
    await eventually(lambda: nothing_pending(gw))
    after = await accounts_db.snapshot()
    assert [r for r in after if r[3] != "live-1"] == [r for r in before if r[3] != "live-1"]
    assert {sid for sid, _, _ in await accounts_db.writes()} == {"live-1"}
    assert await accounts_db.touched() == {"live-1"}


async def test_the_request_path_makes_no_database_call_and_one_redis_write(
    simulators, gateways, http, accounts_db, own_redis: RedisServer
):
    sims = await simulators(2)
    await backend_rows(accounts_db, ["hot-0", "hot-1", "hot-2"])
    async with Relay("127.0.0.1", 3306) as relay:
        gw = await gateways(
            [s.url for s in sims],
            mysql_dsn=accounts_db.dsn_via(relay.address),
            redis_url=own_redis.url,
            admin_token=TOKEN,
        )
        enqueue = hashlib.sha1(ENQUEUE.encode()).hexdigest()
        await create(http, gw, "hot-0")  # loads the scripts: no NOSCRIPT retry below
        await eventually(lambda: nothing_pending(gw))
        async with watch_redis(own_redis) as commands:
            first = await create(http, gw, "hot-1")
            await create(http, gw, "hot-2")
            await admin(http, gw, "PUT", "/gateway/sessions/hot-2", json={"instance": first})
            await eventually(lambda: nothing_pending(gw))
        # two creates and one move: one queue write each, one session each
        writes = [c for c in commands if c[:2] == ["EVALSHA", enqueue]]
        assert [c[2:8] for c in writes] == [
            ["4", *gw_keys(gw), sid] for sid in ("hot-1", "hot-2", "hot-2")
        ]
        await eventually(lambda: table_says(accounts_db, {"hot-2": (first, index_of(gw, first))}))

        mysql_bytes = (relay.sent, relay.received, relay.connections)
        written = sample(gw, "gateway_db_writes_total", result="written")
        for _ in range(10):
            assert await status_via(http, gw, "hot-1") == first
            body = {"session_id": "hot-1", "recipient_phone": "62811", "message": "hi"}
            async with http.post(
                f"{gw.url}/api/messages/send", json={**body, "api_key": API_KEY}
            ) as resp:
                assert resp.status in (200, 400)  # answered by the instance
        assert (relay.sent, relay.received, relay.connections) == mysql_bytes  # zero round trips
        assert sample(gw, "gateway_db_writes_total", result="written") == written


def gw_keys(gw: RunningGateway) -> list[str]:
    assert gw.gw.database is not None
    p = gw.gw.database.pending
    return [p.values, p.order, p.since, p.sequence]


class watch_redis:
    """Every command the server runs while the block runs (Redis ``MONITOR``)."""

    def __init__(self, server: RedisServer) -> None:
        self.client = aioredis.Redis.from_url(server.url, decode_responses=True)
        self.commands: list[list[str]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> list[list[str]]:
        ready = asyncio.Event()

        async def listen() -> None:
            async with self.client.monitor() as monitor:
                ready.set()
                while True:
                    info = await monitor.next_command()
                    self.commands.append(info["command"].split(" "))

        self._task = asyncio.create_task(listen())
        await ready.wait()
        return self.commands

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.sleep(0.05)  # let the last commands arrive
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        await self.client.aclose()


async def test_without_a_dsn_the_gateway_writes_nothing_and_shows_no_database_metrics(
    simulators, gateways, http, redis_client
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await create(http, gw, "plain-1")
    assert gw.gw.database is None
    async with http.get(f"{gw.url}/metrics") as resp:
        assert "gateway_db_" not in await resp.text()
    assert [k async for k in redis_client.scan_iter(f"{gw.gw.settings.key_prefix}db:*")] == []
