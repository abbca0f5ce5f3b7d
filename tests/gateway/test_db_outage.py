"""The database away: traffic goes on untouched, nothing is lost, the table catches up.

The gateway reaches MariaDB through a relay the test cuts (a partition: open connections
hang, new ones get nothing), so its own timeouts are what it meets.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp

from gateway.shared.settings import DatabaseSettings
from tests.gateway.test_admin import create
from tests.gateway.test_write_back import backend_rows, index_of, nothing_pending, table_says
from tests.harness import API_KEY, RunningGateway, eventually, sample
from tests.relay import Relay

# Waits on the database would take seconds; a proxied request takes milliseconds.
SLOW_DB = DatabaseSettings(connect_timeout=4.0, query_timeout=4.0)
SLOWED = 2.0  # seconds: a request that waited on the database would take 4 s at least


async def timed(
    http: aiohttp.ClientSession, method: str, path: str, gw: RunningGateway, **kw: object
) -> tuple[int, float, str]:
    """One request through ``gw``: its status, how long it took, the instance that answered."""
    started = time.monotonic()
    async with http.request(method, f"{gw.url}{path}", **kw) as resp:  # type: ignore[arg-type]
        await resp.read()
        return resp.status, time.monotonic() - started, resp.headers.get("X-WhatsApp-Instance", "")


async def test_a_database_outage_during_traffic_fails_and_slows_no_request(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(3)
    sids = [f"out-{i}" for i in range(12)]
    await backend_rows(accounts_db, sids)
    async with Relay("127.0.0.1", 3306) as relay:
        gw = await gateways(
            [s.url for s in sims], mysql_dsn=accounts_db.dsn_via(relay.address), database=SLOW_DB
        )
        where = {sid: await create(http, gw, sid) for sid in sids[:4]}
        await eventually(lambda: nothing_pending(gw))

        relay.cut()
        answers: list[tuple[int, float, str]] = []

        async def traffic(until: float) -> None:
            i = 4
            while time.monotonic() < until:
                if i < len(sids):  # placements and reads mixed
                    body = {"session_id": sids[i], "api_key": API_KEY}
                    answer = await timed(http, "POST", "/api/sessions", gw, json=body)
                    where[sids[i]] = answer[2]
                else:
                    path = f"/api/sessions/{sids[i % len(sids)]}/status?api_key={API_KEY}"
                    answer = await timed(http, "GET", path, gw)
                i += 1
                answers.append(answer)
                await asyncio.sleep(0.02)

        await traffic(time.monotonic() + 5.0)  # several seconds without the database

        async def down() -> bool:  # the writer met its timeout meanwhile
            failed = sample(gw, "gateway_db_writes_total", result="failed") or 0
            return sample(gw, "gateway_db_up") == 0 and failed > 0

        await eventually(down)
        assert len(answers) > 20
        assert [a for a in answers if a[0] != 200] == []  # zero failed
        assert [a for a in answers if a[1] >= SLOWED] == []  # zero slowed
        assert gw.gw.database is not None
        await gw.gw.database.refresh_gauges()
        assert sample(gw, "gateway_db_pending_updates") == len(sids) - 4
        assert (sample(gw, "gateway_db_oldest_pending_seconds") or 0) > 1

        relay.restore()
        expected = {sid: (url, index_of(gw, url)) for sid, url in where.items()}
        await eventually(lambda: table_says(accounts_db, expected), timeout=20)

        async def up() -> bool:  # set once the batch's connection is back in the pool
            return sample(gw, "gateway_db_up") == 1

        await eventually(up)


async def test_a_gateway_restart_during_the_outage_loses_no_update(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(2)
    sids = [f"rs-{i}" for i in range(6)]
    await backend_rows(accounts_db, sids)
    async with Relay("127.0.0.1", 3306) as relay:
        options = {"mysql_dsn": accounts_db.dsn_via(relay.address), "database": SLOW_DB}
        first = await gateways([s.url for s in sims], **options)
        relay.cut()
        where = {sid: await create(http, first, sid) for sid in sids}
        await stop(first)  # the restart: the updates are only in Redis now

        second = await gateways([s.url for s in sims], **options)
        assert second.gw.database is not None
        assert (await second.gw.database.pending.stats())[0] == len(sids)
        relay.restore()
        expected = {sid: (url, index_of(second, url)) for sid, url in where.items()}
        await eventually(lambda: table_says(accounts_db, expected), timeout=20)
        await eventually(lambda: nothing_pending(second))


async def stop(gateway: RunningGateway) -> None:
    await gateway.runner.cleanup()
