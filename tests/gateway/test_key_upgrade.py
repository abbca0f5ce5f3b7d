"""An upgrade over data an earlier version left: the keys it named without hash tags are
adopted under their new names, merged with what the new version wrote meanwhile."""

from __future__ import annotations

import time

import redis.asyncio as aioredis

from gateway.accounts.pending import PendingUpdates, Update
from gateway.shared.outbox import Outbox
from gateway.shared.redis_url import adopt_renamed
from gateway.state.keys import Keys
from tests.harness import REDIS_URL


async def test_the_outbox_of_an_earlier_version_is_delivered_after_the_upgrade(
    redis_prefix: str,
) -> None:
    redis = aioredis.Redis.from_url(REDIS_URL)
    kp = f"{redis_prefix}wa-gateway:"
    old = f"{kp}webhooks:"
    now = time.time()
    # As the earlier version's receive script left one event of s-1 (no tags anywhere).
    await redis.hset(
        f"{old}event:e-old",
        mapping={"path": "/p", "body": b"{}", "lane": "s-1", "received": now, "since": now},
    )
    await redis.rpush(f"{old}lane:s-1", "e-old")
    await redis.zadd(f"{old}lanes", {"s-1": now})
    await redis.zadd(f"{old}pending", {"e-old": now})
    outbox = Outbox(redis, kp)
    # The new version took one more event of s-1 before the old keys were adopted.
    await redis.hset(outbox.keys.event("e-new"), mapping={"path": "/p", "lane": "s-1"})
    await redis.rpush(outbox.keys.lane("s-1"), "e-new")
    await redis.zadd(outbox.keys.pending, {"e-new": now + 1})
    try:
        assert await outbox.adopt_old_keys() == 4
        assert await redis.keys(f"{old}*") == []
        assert await redis.lrange(outbox.keys.lane("s-1"), 0, -1) == [b"e-new", b"e-old"]
        assert (await outbox.backlog(now)).waiting == 2
        [first], _ = await outbox.take(10, 30, now + 2)
        assert first.id == "e-new" and await outbox.delivered(first, now + 2)
        [second], _ = await outbox.take(10, 30, now + 3)
        assert (second.id, second.path, second.received) == ("e-old", "/p", now)
    finally:
        await redis.delete(*[k async for k in redis.scan_iter(f"{redis_prefix}*")] or ["-"])
        await redis.aclose()


async def test_the_table_updates_and_counts_of_an_earlier_version_are_adopted(
    redis_prefix: str,
) -> None:
    redis = aioredis.Redis.from_url(REDIS_URL)
    kp = f"{redis_prefix}wa-gateway:"
    pending = PendingUpdates(REDIS_URL, kp, 5.0)
    try:
        waiting = Update("s-1", "http://a", 0)
        await redis.hset(f"{kp}db:updates", "s-1", waiting.encode())
        await redis.zadd(f"{kp}db:order", {"s-1": 7})
        await redis.hset(f"{kp}db:since", "s-1", 1)
        await redis.set(f"{kp}db:sequence", 7)
        await pending.add([Update("s-2", "http://b", 1)])  # the new version, before adopting

        head = await pending.head(10)
        assert sorted(head, key=lambda u: u.session_id) == [waiting, Update("s-2", "http://b", 1)]
        assert await redis.get(pending.sequence) == b"7"  # the larger of the two counters

        keys = Keys(kp)
        await redis.hset(f"{kp}active", "http://a", 3)
        assert await adopt_renamed(redis, keys.renamed) == 1
        assert await redis.hgetall(keys.active) == {b"http://a": b"3"}
    finally:
        await pending.close()
        await redis.delete(*[k async for k in redis.scan_iter(f"{redis_prefix}*")] or ["-"])
        await redis.aclose()
