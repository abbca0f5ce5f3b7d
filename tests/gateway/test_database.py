"""The write-behind's parts: the queue on the real Redis, the statements and the writer on the
real MariaDB, and the pure judgement of a table row."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from gateway.accounts.pending import PendingUpdates, Update
from gateway.accounts.table import AccountsTable, Statements
from gateway.accounts.writer import Writer, next_backoff
from gateway.decisions.account_rows import NOT_FOUND, UNKNOWN_URL, VERIFIED, WRONG, Row, judge
from gateway.decisions.view import BackendView
from gateway.metrics import DatabaseMetrics
from gateway.shared.settings import DatabaseSettings
from tests.accounts import AccountsDB
from tests.harness import REDIS_URL, RedisServer, eventually
from tests.relay import Relay

A, B, C = "http://10.0.0.1:3001", "http://10.0.0.2:3001", "http://10.0.0.3:3001"
INSTANCES = (A, B, C)

MakeWriter = Callable[..., Writer]


def value(writer: Writer, name: str, **labels: str) -> float:
    return writer.metrics.registry.get_sample_value(name, labels) or 0.0


@pytest.fixture
async def make_writer(redis_prefix: str, accounts_db: AccountsDB) -> AsyncIterator[MakeWriter]:
    """Writers on the test's queue and database; ``dsn``/``redis_url`` may point elsewhere."""
    made: list[Writer] = []

    def make(dsn: str = "", redis_url: str = REDIS_URL, **database: Any) -> Writer:
        settings = DatabaseSettings(**{"connect_timeout": 1.0, "query_timeout": 2.0, **database})
        metrics = DatabaseMetrics(CollectorRegistry())
        writer = Writer(
            # The machine is shared: Redis may answer slowly, which is not what is tested here.
            PendingUpdates(redis_url, f"{redis_prefix}wa-gateway:", 5.0),
            AccountsTable(dsn or accounts_db.dsn, settings, metrics),
            metrics,
            BackendView(INSTANCES),
            poll=0.05,
        )
        made.append(writer)
        return writer

    yield make
    for writer in made:
        await writer.close()


async def drained(writer: Writer) -> bool:
    count, _ = await writer.pending.stats()
    return count == 0


async def _is(db: AccountsDB, sid: str, expected: tuple[str | None, int | None]) -> bool:
    return (await db.where()).get(sid) == expected


# --- pure ---------------------------------------------------------------------------------


def test_backoff_starts_at_one_second_and_doubles_up_to_thirty():
    waits, wait = [], 0.0
    for _ in range(7):
        wait = next_backoff(wait)
        waits.append(wait)
    assert waits == [1, 2, 4, 8, 16, 30, 30]


def test_the_update_is_the_backends_statement_with_values_as_parameters():
    sql = Statements.build(DatabaseSettings())
    assert sql.update == (
        "UPDATE `whatsapp_accounts` SET `assigned_instance_url` = %s,"
        " `assigned_instance_index` = %s, `updated_at` = NOW()"
        " WHERE `session_id` = %s AND `provider_type` = 'webjs' AND `deleted_at` IS NULL"
    )
    renamed = Statements.build(DatabaseSettings(table="accts", url_column="node_url"))
    assert renamed.update.startswith("UPDATE `accts` SET `node_url` = %s,")
    assert "INSERT" not in str(sql) and "DELETE" not in str(sql)


# --- the queue ----------------------------------------------------------------------------


async def test_the_last_write_per_session_wins_and_keeps_its_place(make_writer):
    pending = make_writer().pending
    await pending.add([Update("s-a", A, 0)])
    await pending.add([Update("s-b", A, 0), Update("s-c", B, 1)])
    await pending.add([Update("s-a", C, 2)])
    assert await pending.head(10) == [Update("s-a", C, 2), Update("s-b", A, 0), Update("s-c", B, 1)]
    assert await pending.head(2) == [Update("s-a", C, 2), Update("s-b", A, 0)]
    assert (await pending.stats())[0] == 3


async def test_an_update_queued_during_a_write_outlives_its_acknowledgement(make_writer):
    pending = make_writer().pending
    await pending.add([Update("s-a", A, 0), Update("s-b", A, 0)])
    batch = await pending.head(10)
    await pending.add([Update("s-a", B, 1)])  # moved while the batch was being written
    assert await pending.ack(batch) == 1
    assert await pending.head(10) == [Update("s-a", B, 1)]


async def test_one_writer_at_a_time_and_a_dead_writers_lock_expires(make_writer):
    pending = make_writer().pending
    assert await pending.hold("first", 0.3)
    assert await pending.hold("first", 0.3)  # kept by its holder
    assert not await pending.hold("second", 0.3)
    started = time.monotonic()
    await eventually(lambda: pending.hold("second", 5))  # "first" died: it expires
    assert time.monotonic() - started < 2
    await pending.release("first")  # no longer its lock: no effect
    assert not await pending.hold("first", 5)


# --- the writer ---------------------------------------------------------------------------


async def test_only_wrong_live_webjs_rows_are_written(make_writer, accounts_db):
    db = accounts_db
    await db.insert("s-wrong", B, 1)
    await db.insert("s-empty")
    await db.insert("s-right", A, 0)
    await db.insert("s-meta", provider="meta")
    await db.insert("s-deleted", B, 1, deleted=True)
    await db.insert("s-other", C, 2)  # nobody asked
    before = await db.where()
    writer = make_writer()
    for sid in ("s-wrong", "s-empty", "s-right", "s-meta", "s-deleted", "s-missing"):
        await writer.record(sid, A)
    await writer.record("s-elsewhere", "http://not-configured:1")
    assert await writer.drain() == 7

    after = await db.where()
    assert after["s-wrong"] == after["s-empty"] == after["s-right"] == (A, 0)
    for sid in ("s-meta", "s-deleted", "s-other"):
        assert after[sid] == before[sid]
    assert "s-missing" not in after and "s-elsewhere" not in after  # never inserted
    assert await db.touched() == {"s-wrong", "s-empty"}
    assert await db.writes() == [("s-wrong", A, 0), ("s-empty", A, 0)]
    assert value(writer, "gateway_db_writes_total", result="written") == 2
    assert value(writer, "gateway_db_writes_total", result="unchanged") == 1
    assert value(writer, "gateway_db_writes_total", result="no_row") == 4
    assert value(writer, "gateway_db_up") == 1
    assert await drained(writer)


async def test_an_unconfigured_url_is_written_with_no_index(make_writer, accounts_db):
    await accounts_db.insert("s-1", A, 0)
    writer = make_writer()
    await writer.record("s-1", "http://not-configured:1")
    await writer.drain()
    assert (await accounts_db.where())["s-1"] == ("http://not-configured:1", None)


async def test_the_queue_is_written_in_order_in_batches(make_writer, accounts_db):
    sids = [f"s-{i}" for i in range(7)]
    await accounts_db.insert_many((sid, None, None, "webjs", "connected", False, 1) for sid in sids)
    writer = make_writer(batch_size=3)
    for sid in sids:
        await writer.record(sid, B)
    await writer.record("s-0", C)  # a later move keeps the first place, with the last value
    await writer.drain()
    assert await accounts_db.writes() == [("s-0", C, 2)] + [(sid, B, 1) for sid in sids[1:]]


async def test_processes_sharing_the_queue_end_with_the_last_value(make_writer, accounts_db):
    sids = [f"p-{i}" for i in range(6)]
    await accounts_db.insert_many((sid, None, None, "webjs", "connected", False, 1) for sid in sids)
    writers = [make_writer(batch_size=2), make_writer(batch_size=2)]
    for writer in writers:
        await writer.start()
    last: dict[str, tuple[str, int]] = {}
    for i in range(60):
        sid, url = sids[i % len(sids)], INSTANCES[(i * 7) % 3]
        await writers[i % 2].record(sid, url)
        last[sid] = (url, INSTANCES.index(url))
        if i % 5 == 0:
            await asyncio.sleep(0.01)  # let the writers run between moves

    async def table_is_last() -> bool:
        return await drained(writers[0]) and await accounts_db.where() == last

    await eventually(table_is_last)


async def test_a_database_outage_keeps_every_update_and_drains_after_it(make_writer, accounts_db):
    sids = [f"o-{i}" for i in range(5)]
    await accounts_db.insert_many((sid, None, None, "webjs", "connected", False, 1) for sid in sids)
    async with Relay("127.0.0.1", 3306) as relay:
        writer = make_writer(dsn=accounts_db.dsn_via(relay.address), query_timeout=3.0)
        await writer.start()
        await writer.record("o-0", A)
        await eventually(lambda: _is(accounts_db, "o-0", (A, 0)))
        relay.cut()
        for sid in sids[1:]:
            started = time.monotonic()
            await writer.record(sid, B)
            assert time.monotonic() - started < 1.5  # the database (3 s timeouts) is not waited on

        async def failed() -> bool:
            return value(writer, "gateway_db_writes_total", result="failed") > 0

        await eventually(failed)
        assert value(writer, "gateway_db_up") == 0
        await writer.refresh_gauges()
        assert value(writer, "gateway_db_pending_updates") == 4
        assert value(writer, "gateway_db_oldest_pending_seconds") > 0
        relay.restore()
        await eventually(lambda: drained(writer), timeout=15)
    assert await accounts_db.writes() == [("o-0", A, 0)] + [(sid, B, 1) for sid in sids[1:]]
    assert value(writer, "gateway_db_up") == 1


async def test_a_redis_outage_keeps_updates_in_memory_until_it_returns(
    make_writer, accounts_db, own_redis: RedisServer
):
    await accounts_db.insert("r-1")
    writer = make_writer(redis_url=own_redis.url)
    await writer.start()
    own_redis.stop()
    started = time.monotonic()
    await writer.record("r-1", C)
    await writer.record("r-1", B)
    assert time.monotonic() - started < 1.5  # one bounded try, then memory
    own_redis.start()
    await eventually(lambda: _is(accounts_db, "r-1", (B, 1)), timeout=15)
    assert await accounts_db.writes() == [("r-1", B, 1)]


# --- judging a row of the table (pure) ----------------------------------------------------


def test_a_row_is_verified_wrong_or_left_alone():
    holders = {"here": [A], "moved": [B], "twice": [A, C], "off": [C]}
    pins = {"twice": C}

    def kind(sid: str, url: str | None, index: int | None) -> tuple[str, str | None, int | None]:
        verdict = judge(Row(sid, url, index), holders, BackendView(INSTANCES), pins)
        return verdict.kind, verdict.url, verdict.index

    assert kind("here", A, 0) == (VERIFIED, A, 0)
    assert kind("moved", A, 0) == (WRONG, B, 1)
    assert kind("moved", None, None) == (WRONG, B, 1)  # never placed by the backend
    assert kind("off", C, 0) == (WRONG, C, 2)  # the right URL with a wrong index
    assert kind("twice", A, 0) == (VERIFIED, A, 0)  # a holder: left where it is
    assert kind("twice", B, 1) == (WRONG, C, 2)  # not a holder: the pin, being one, wins
    assert kind("gone", A, 0) == (NOT_FOUND, None, None)
    assert kind("gone", None, None) == (NOT_FOUND, None, None)
    assert kind("gone", "http://gateway:8080", 0) == (UNKNOWN_URL, None, None)
