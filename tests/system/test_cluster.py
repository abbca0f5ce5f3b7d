"""Every Lua script of the gateway and the workers on a real 3-primary Redis Cluster.

Redis Cluster runs a script only when all its ``KEYS`` are in one slot, and refuses any key
the script touches outside it: a script that built a key name inside itself, or whose keys
lack a common hash tag, fails here with CROSSSLOT or a "non local key" error.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator

import aiomysql
import pytest
import redis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import RedisClusterException, ResponseError

from gateway.accounts import pending
from gateway.accounts.pending import PendingUpdates, Update
from gateway.shared.laravel.failed import failed_store
from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.queues import Queues
from gateway.shared.outbox import Incoming, Outbox
from gateway.state import counts, flights, idempotency
from gateway.state.keys import Keys
from tests.mysql import MYSQL, own_database
from tests.redis_servers import Cluster
from tests.workers.conftest import FAILED_JOBS_DDL


@pytest.fixture
async def rc(cluster: Cluster) -> AsyncIterator[RedisCluster]:
    client = RedisCluster(host="127.0.0.1", port=cluster.ports[0])
    await client.initialize()
    yield client
    await client.aclose()


@pytest.fixture
def kp() -> str:
    """The test's own key prefix, as ``<REDIS_PREFIX>wa-gateway:``."""
    return f"t-{uuid.uuid4().hex[:8]}:wa-gateway:"


def test_the_cluster_spreads_the_slots_over_three_primaries(cluster: Cluster) -> None:
    shards = redis.Redis(port=cluster.ports[0]).cluster("slots")
    assert len(shards) == 3


async def test_placement_counts_flights_and_idempotency_scripts(rc: RedisCluster, kp: str) -> None:
    keys = Keys(kp)
    urls = ["http://a", "http://b", "http://c"]
    place = rc.register_script(counts.PLACE)
    now = time.time()
    placing = [keys.active, *(keys.placing(u) for u in urls)]
    assert await place(keys=placing, args=[now, now + 30, 10, "t1", "", *urls]) == b"http://a"
    confirm = rc.register_script(counts.CONFIRM)
    assert await confirm(keys=[keys.active, keys.placing("http://a")], args=["http://a", "t1"]) == 1
    assert await place(keys=placing, args=[now, now + 30, 10, "t2", "", *urls]) == b"http://b"
    release = rc.register_script(counts.RELEASE)
    assert await release(keys=[keys.active], args=["http://a"]) == 0

    lock = keys.creating("s-1")
    await rc.set(lock, "tok", px=10_000)
    assert await rc.register_script(flights.RENEW)(keys=[lock], args=["tok", 20_000]) == 1
    assert await rc.register_script(flights.RELEASE)(keys=[lock], args=["other"]) == 0
    assert await rc.register_script(flights.RELEASE)(keys=[lock], args=["tok"]) == 1

    key = keys.idempotency("scope-1")
    begin = rc.register_script(idempotency.BEGIN)
    assert await begin(keys=[key], args=["fp", "tok", 60_000]) is None
    assert (await begin(keys=[key], args=["fp", "x", 60_000]))[0] == b"flight"
    settle = rc.register_script(idempotency.SETTLE)
    assert await settle(keys=[key], args=["tok", "done", "answer", 60_000]) == 1
    assert await begin(keys=[key], args=["fp", "y", 60_000]) == [b"done", b"fp", b"answer"]
    await rc.hset(key, "token", "z")
    assert await rc.register_script(idempotency.FREE)(keys=[key], args=["z"]) == 1
    await rc.delete(keys.active, *placing[1:])


async def test_the_table_update_queue_scripts(rc: RedisCluster, kp: str) -> None:
    q = PendingUpdates("redis://127.0.0.1:1/0", kp, 1.0)  # its key names; never connected
    values = [q.values, q.order, q.since]
    one, two = Update("s-1", "http://a", 0), Update("s-2", "http://b", 1)
    enqueue = rc.register_script(pending.ENQUEUE)
    args = [one.session_id, one.encode(), two.session_id, two.encode()]
    assert await enqueue(keys=[*values, q.sequence], args=args) == 2
    head = await rc.register_script(pending.HEAD)(keys=values, args=[10])
    assert head == [b"s-1", one.encode().encode(), b"s-2", two.encode().encode()]
    count, _ = await rc.register_script(pending.STATS)(keys=[q.order, q.since])
    assert count == 2
    ack = rc.register_script(pending.ACK)
    assert await ack(keys=values, args=[one.session_id, one.encode()]) == 1
    hold = rc.register_script(pending.HOLD)
    assert await hold(keys=[q.lock], args=["tok", 5000]) == 1
    assert await hold(keys=[q.lock], args=["other", 5000]) == 0
    assert await rc.register_script(pending.RELEASE)(keys=[q.lock], args=["tok"]) == 1
    await q.close()
    await rc.delete(*values, q.sequence)


async def test_the_webhook_outbox_end_to_end(rc: RedisCluster, kp: str) -> None:
    outbox = Outbox(rc, kp)
    now = time.time()
    for n, lane in enumerate(["s-1", "s-1", "s-2"]):
        body = json.dumps({"n": n}).encode()
        event = Incoming("/hook", body, "", "application/json", "message", lane, f"sig{n}")
        assert await outbox.receive(event, now, dedup_window=60, replay_ttl=300) is None
    again = Incoming("/hook", b'{"n": 0}', "", "application/json", "message", "s-1", "sig0")
    assert (await outbox.receive(again, now, dedup_window=60, replay_ttl=300)).kind == "replay"
    assert (await outbox.backlog(now)).waiting == 3

    taken, _ = await outbox.take(10, 30, now)
    assert sorted(d.lane for d in taken) == ["s-1", "s-2"]
    first = next(d for d in taken if d.lane == "s-1")
    other = next(d for d in taken if d.lane == "s-2")
    assert await outbox.retry(first, now, now, "backend 500")
    assert await outbox.dead(other, now, "500", "gave up")
    [again_first], _ = await outbox.take(10, 30, now + 1)
    assert again_first.id == first.id and again_first.attempts == 2
    assert await outbox.delivered(again_first, now + 1)
    [second], _ = await outbox.take(10, 30, now + 2)
    assert json.loads(second.body) == {"n": 1} and await outbox.delivered(second, now + 2)

    [letter] = await outbox.dead_letters()
    assert letter.id == other.id and letter.error == "gave up"
    assert await outbox.requeue(other.id, now + 3)
    [back], _ = await outbox.take(10, 30, now + 3)
    assert back.id == other.id
    assert await outbox.dead(back, now + 3, "500", "gave up again")
    assert await outbox.forget(other.id)
    assert (await outbox.backlog(now + 4)).waiting == 0
    assert await outbox.adopt_old_keys() == 0  # scans every primary


async def test_the_queue_scripts_with_one_hash_tag_take_pace_release_and_settle(
    rc: RedisCluster, kp: str
) -> None:
    prefix = kp.removesuffix("wa-gateway:")
    names = ["{wa}urgent", "{wa}camp"]
    queues = Queues(rc, prefix, names, key_prefix=kp, intervals={"{wa}camp": 0.3})
    assert all(key.endswith(":{wa}") for key in queues.pacing)
    for n in range(2):
        await queues.push("{wa}camp", encode(new_payload("send", {"session_id": "A", "n": n})))
    await queues.push("{wa}urgent", encode(new_payload("urgent", {})))

    take = await queues.reserve(10, retry_after=90)

    assert [j.queue for j in take.jobs] == names and take.paced == ["{wa}camp"]
    urgent, camp = take.jobs
    await queues.extend(take.jobs, 90)
    await queues.release(urgent, 0.0)
    await queues.delete(camp)
    await queues.later("{wa}urgent", encode(new_payload("later", {})), 0.0)
    again = await queues.reserve(10, retry_after=90)
    assert sorted(j.name for j in again.jobs) == ["later", "urgent"]
    depths = {d.queue: d for d in await queues.depths()}
    assert (depths["{wa}urgent"].reserved, depths["{wa}camp"].delayed) == (2, 1)
    assert await queues.adopt_old_pacing() == 0

    async with own_database(FAILED_JOBS_DDL) as (db, _):
        mysql = await aiomysql.create_pool(**MYSQL, db=db, autocommit=True)
        try:
            store = failed_store(rc, prefix, mysql)
            entry = await store.record(again.jobs[0], "Traceback: boom")
            assert not entry.waiting
            assert await rc.zcard(queues.of("{wa}urgent").reserved) == 1
        finally:
            mysql.close()
            await mysql.wait_closed()
    await rc.delete(*queues._reserve_keys)


async def test_queues_in_several_slots_cannot_be_taken_in_one_step(
    rc: RedisCluster, kp: str
) -> None:
    """Queue names without one common hash tag (``urgent``, or Laravel 13's ``{urgent}``)
    put each queue in its own slot: the pool's take, one script for all, is refused."""
    prefix = kp.removesuffix("wa-gateway:")
    queues = Queues(rc, prefix, ["{urgent}", "{camp}"], key_prefix=kp)
    with pytest.raises(RedisClusterException, match="same key slot"):
        await queues.reserve(10, retry_after=90)


async def test_a_script_touching_a_key_it_did_not_declare_fails_here(rc: RedisCluster) -> None:
    """What the scripts above would meet had they built a key name inside themselves."""
    built_inside = "return redis.call('get', ARGV[1] .. 'lane:s-1')"
    with pytest.raises(ResponseError, match=r"non local key|same slot"):
        await rc.eval(built_inside, 1, "{webhooks}:lanes", "{elsewhere}:")
