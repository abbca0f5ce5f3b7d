"""``python -m gateway sync-db`` and the database's own count in ``/gateway/distribution``."""

from __future__ import annotations

import redis.asyncio as aioredis

from gateway.shared.settings import DatabaseSettings
from tests.accounts import AccountsDB
from tests.gateway.test_admin import TOKEN, admin, cli, create, create_directly
from tests.gateway.test_write_back import backend_rows, index_of, nothing_pending, table_says
from tests.harness import API_KEY, REDIS_URL, RunningGateway, Sim, eventually, gateway_command
from tests.relay import Relay


async def sync_db(db: AccountsDB, sims: list[Sim], prefix: str, *args: str) -> tuple[int, str, str]:
    """``python -m gateway sync-db ARGS`` as a real process, on the test's servers."""
    env = {
        "WHATSAPP_INSTANCES": ",".join(s.url for s in sims),
        "MYSQL_DSN": db.dsn,
        "REDIS_URL": REDIS_URL,
        "REDIS_PREFIX": prefix,
        "LARAVEL_API_TOKEN": API_KEY,
        "GATEWAY_BACKEND_SEES": "instance",
    }
    return await gateway_command("sync-db", *args, env=env)


def counts(out: str) -> dict[str, int]:
    """The result table: label -> rows."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("result"))
    table = {}
    for line in lines[start + 1 :]:
        if not line.strip():
            break
        label, _, number = line.rstrip().rpartition(" ")
        table[label.strip()] = int(number)
    return table


async def mixed_table(http, db: AccountsDB, sims: list[Sim]) -> None:
    """One row of each kind; the sessions are on the instances as listed below."""
    for sid, sim in (("ok-1", 0), ("moved-1", 1), ("idx-1", 2), ("meta-1", 0), ("del-1", 1)):
        await create_directly(http, sims[sim].url, sid)
    await backend_rows(db, ["ok-1", "moved-1"], url=sims[0].url, index=0)
    await backend_rows(db, ["idx-1"], url=sims[2].url, index=0)  # right URL, wrong index
    await backend_rows(db, ["gone-1"], url=sims[1].url, index=1)  # on no instance
    await backend_rows(db, ["null-1"])  # never placed
    await backend_rows(db, ["stale-1"], url="http://localhost:3009", index=5)
    await backend_rows(db, ["meta-1"], provider="meta")
    await backend_rows(db, ["del-1"], url=sims[0].url, index=0, deleted=True)


async def db_keys(prefix: str, redis_client: aioredis.Redis) -> list[str]:
    return [k async for k in redis_client.scan_iter(f"{prefix}wa-gateway:*db*")]


async def test_sync_db_dry_run_reports_and_changes_nothing(
    simulators, http, accounts_db, redis_prefix, redis_client
):
    sims = await simulators(3)
    await mixed_table(http, accounts_db, sims)
    before = await accounts_db.snapshot()
    rc, out, err = await sync_db(accounts_db, sims, redis_prefix, "--dry-run")
    assert rc == 0, err
    assert counts(out) == {
        "verified": 1,
        "would fix": 2,
        "not found on any instance": 2,
        "unknown instance URL": 1,
    }
    assert "6 webjs row(s) checked against 3 of 3 instance(s)" in out
    assert "moved-1" in out and "stale-1" in out and "http://localhost:3009" in out
    assert out.rstrip().endswith("dry run: nothing was changed")
    assert "checking rows" not in err  # a small table: no progress bar
    assert await accounts_db.snapshot() == before
    assert await accounts_db.writes() == []
    assert await db_keys(redis_prefix, redis_client) == []  # nothing queued either


async def test_sync_db_fixes_every_wrong_row_and_leaves_the_rest(
    simulators, http, accounts_db, redis_prefix, redis_client
):
    sims = await simulators(3)
    await mixed_table(http, accounts_db, sims)
    before = {row[3]: row for row in await accounts_db.snapshot()}
    rc, out, err = await sync_db(accounts_db, sims, redis_prefix)
    assert rc == 0, err
    assert counts(out)["fixed"] == 2
    where = await accounts_db.where()
    assert where["moved-1"] == (sims[1].url, 1)
    assert where["idx-1"] == (sims[2].url, 2)
    assert await accounts_db.touched() == {"moved-1", "idx-1"}
    for row in await accounts_db.snapshot():
        if row[3] not in ("moved-1", "idx-1"):
            assert row == before[row[3]]
    assert await redis_client.zcard(f"{redis_prefix}wa-gateway:{{db}}:order") == 0

    rc, out, _ = await sync_db(accounts_db, sims, redis_prefix)
    assert rc == 0 and counts(out)["verified"] == 3 and counts(out)["fixed"] == 0


async def test_sync_db_shows_progress_on_a_large_table(simulators, http, accounts_db, redis_prefix):
    sims = await simulators(1)
    rows = 1500
    await accounts_db.insert_many(
        (f"bulk-{i:05d}", sims[0].url, 0, "webjs", "connected", False, 1) for i in range(rows)
    )
    await create_directly(http, sims[0].url, "bulk-00042")
    rc, out, err = await sync_db(accounts_db, sims, redis_prefix, "--dry-run")
    assert rc == 0, err
    assert "checking rows [" in err and f"{rows}/{rows}" in err
    assert counts(out) == {
        "verified": 1,
        "would fix": 0,
        "not found on any instance": rows - 1,
        "unknown instance URL": 0,
    }


async def test_sync_db_without_a_database_says_so(simulators, redis_prefix):
    sims = await simulators(1)
    env = {"WHATSAPP_INSTANCES": sims[0].url, "MYSQL_DSN": ""}
    rc, _, err = await gateway_command("sync-db", env=env)
    assert rc == 2 and "no database configured" in err


async def test_distribution_shows_the_databases_own_count(simulators, gateways, http, accounts_db):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn, admin_token=TOKEN)
    sids = [f"d-{i}" for i in range(4)]
    await backend_rows(accounts_db, sids)
    where = {sid: await create(http, gw, sid) for sid in sids}
    await eventually_written(gw, accounts_db, where)
    # what the backend also has: rows its balancer counts, and rows it does not
    await accounts_db.insert("qr-1", sims[0].url, 0, status="qr_scanning")
    await accounts_db.insert("off-1", sims[0].url, 0, status="disconnected")
    await accounts_db.insert("nowhere-1")
    await accounts_db.insert("old-1", "http://localhost:3009", 5)
    await accounts_db.insert("del-1", sims[1].url, 1, deleted=True)

    status, body = await admin(http, gw, "GET", "/gateway/distribution")
    assert status == 200
    assert [(r["url"], r["sessions"], r["database"]) for r in body["instances"]] == [
        (sims[0].url, 2, 3),
        (sims[1].url, 2, 2),
    ]
    assert body["database"] == {
        "total": 7,
        "no_instance": 1,
        "unknown_instance": 1,
        "error": None,
    }
    rc, out, _ = await cli(gw, "distribution")
    assert rc == 0
    lines = out.splitlines()
    assert lines[0].split()[-2:] == ["in", "database"]
    assert lines[1].split()[-1] == "3" and lines[3].split()[-1] == "7"
    assert "on no instance: 1, on an unknown instance: 1" in out


async def test_distribution_without_the_database_still_answers(
    simulators, gateways, http, accounts_db
):
    sims = await simulators(1)
    async with Relay("127.0.0.1", 3306) as relay:
        gw = await gateways(
            [sims[0].url],
            mysql_dsn=accounts_db.dsn_via(relay.address),
            database=DatabaseSettings(connect_timeout=0.5, query_timeout=0.5),
            admin_token=TOKEN,
        )
        relay.cut()
        status, body = await admin(http, gw, "GET", "/gateway/distribution")
    assert status == 200
    assert body["instances"][0]["database"] is None
    assert body["database"]["error"].startswith("database unavailable")


async def eventually_written(gw: RunningGateway, db: AccountsDB, where: dict[str, str]) -> None:
    expected = {sid: (url, index_of(gw, url)) for sid, url in where.items()}
    await eventually(lambda: table_says(db, expected))
    await eventually(lambda: nothing_pending(gw))
