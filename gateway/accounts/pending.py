"""The durable queue of table updates still to write, in Redis, shared by every gateway process.

One entry per session (a newer update replaces the value in place, so the last write wins
and keeps the place of the first unwritten one); the order is that of a sequence number
taken when the session got its first unwritten update, whose time (Redis's clock) gives
the age of the oldest. An entry leaves the queue only when the value
written is still the one queued (``ACK``), so an update queued during a write is not lost.
One writer at a time holds ``db:writer``: two processes writing the same session in
parallel could otherwise commit an older value after a newer one. The queue's four keys
share the hash tag ``{db}`` (one slot on Redis Cluster); the writer adopts the names an
earlier version used (``db:updates`` ...) before it first reads the queue.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from redis.exceptions import RedisError

from gateway.decisions.view import BackendView
from gateway.shared.redis_url import adopt_renamed, redis_client

REDIS_ERRORS = (RedisError, OSError, TimeoutError)
T = TypeVar("T")

# Queue updates. KEYS: values hash, order zset, since hash, sequence.
# ARGV: session id, value, session id, value...
ENQUEUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  if redis.call('ZSCORE', KEYS[2], ARGV[i]) == false then
    redis.call('ZADD', KEYS[2], redis.call('INCR', KEYS[4]), ARGV[i])
    redis.call('HSET', KEYS[3], ARGV[i], now)
  end
end
return #ARGV / 2
"""

# The oldest ``ARGV[1]`` entries, as id, value, id, value... KEYS: values, order, since.
HEAD = """
local ids = redis.call('ZRANGE', KEYS[2], 0, tonumber(ARGV[1]) - 1)
local out = {}
for _, id in ipairs(ids) do
  local value = redis.call('HGET', KEYS[1], id)
  if value then
    out[#out + 1] = id
    out[#out + 1] = value
  else
    redis.call('ZREM', KEYS[2], id)
    redis.call('HDEL', KEYS[3], id)
  end
end
return out
"""

# Entries written: dropped unless a newer value came meanwhile. KEYS: values, order, since.
# ARGV: session id, value written, ...
ACK = """
local done = 0
for i = 1, #ARGV, 2 do
  if redis.call('HGET', KEYS[1], ARGV[i]) == ARGV[i + 1] then
    redis.call('HDEL', KEYS[1], ARGV[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    redis.call('HDEL', KEYS[3], ARGV[i])
    done = done + 1
  end
end
return done
"""

# Take or keep the writer's lock. KEYS: lock. ARGV: token, ttl in ms.
HOLD = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end
return 0
"""

# Give the lock back, if still ours. KEYS: lock. ARGV: token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Entries waiting and the age of the oldest, in ms. KEYS: order zset, since hash.
STATS = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local head = redis.call('ZRANGE', KEYS[1], 0, 0)
local age = 0
if head[1] then age = math.max(0, now - tonumber(redis.call('HGET', KEYS[2], head[1]) or now)) end
return {redis.call('ZCARD', KEYS[1]), age}
"""


@dataclass(frozen=True)
class Update:
    """What the backend's row should say of a session: the URL it is to call (the
    instance's, or the gateway's), and the instance's 0-based index in the list."""

    session_id: str
    url: str
    index: int | None

    def encode(self) -> str:
        return json.dumps([self.url, self.index])

    @classmethod
    def decode(cls, session_id: str, raw: str) -> Update:
        url, index = json.loads(raw)
        return cls(session_id, url, index)


def update_for(session_id: str, url: str, view: BackendView) -> Update:
    """The update that records ``session_id`` on instance ``url``, as the backend sees it
    (index None if not configured)."""
    return Update(session_id, *view.shown(url))


class PendingUpdates:
    """The queue's Redis side; every call is bounded by ``timeout``."""

    def __init__(self, redis_url: str, prefix: str, timeout: float) -> None:
        self.timeout = timeout
        self.values = f"{prefix}{{db}}:updates"
        self.order = f"{prefix}{{db}}:order"
        self.since = f"{prefix}{{db}}:since"
        self.sequence = f"{prefix}{{db}}:sequence"
        self.lock = f"{prefix}db:writer"
        self.renamed = {
            f"{prefix}db:{name}": f"{prefix}{{db}}:{name}"
            for name in ("updates", "order", "since", "sequence")
        }
        self._adopted = False
        self.redis = redis_client(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        self._enqueue = self.redis.register_script(ENQUEUE)
        self._head = self.redis.register_script(HEAD)
        self._ack = self.redis.register_script(ACK)
        self._hold = self.redis.register_script(HOLD)
        self._release = self.redis.register_script(RELEASE)
        self._stats = self.redis.register_script(STATS)

    async def close(self) -> None:
        await self.redis.aclose()

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        async with asyncio.timeout(self.timeout):
            return await call()

    async def add(self, updates: Sequence[Update]) -> None:
        """Queue updates in one round trip (the only call a create or a move makes)."""
        if not updates:
            return
        args = [part for u in updates for part in (u.session_id, u.encode())]
        keys = [self.values, self.order, self.since, self.sequence]
        await self._run(lambda: self._enqueue(keys=keys, args=args))

    async def head(self, count: int) -> list[Update]:
        """The ``count`` oldest updates, oldest first."""
        if not self._adopted:
            await self._run(lambda: adopt_renamed(self.redis, self.renamed))
            self._adopted = True
        keys = [self.values, self.order, self.since]
        raw = await self._run(lambda: self._head(keys=keys, args=[count]))
        pairs = zip(raw[::2], raw[1::2], strict=True)
        return [Update.decode(sid.decode(), value.decode()) for sid, value in pairs]

    async def ack(self, updates: Sequence[Update]) -> int:
        """Drop written updates that were not replaced meanwhile; how many were dropped."""
        args = [part for u in updates for part in (u.session_id, u.encode())]
        keys = [self.values, self.order, self.since]
        return int(await self._run(lambda: self._ack(keys=keys, args=args)))

    async def hold(self, token: str, ttl: float) -> bool:
        """Take the writer's lock, or extend it when ``token`` holds it already."""
        args = [token, int(ttl * 1000)]
        return bool(await self._run(lambda: self._hold(keys=[self.lock], args=args)))

    async def release(self, token: str) -> None:
        await self._run(lambda: self._release(keys=[self.lock], args=[token]))

    async def stats(self) -> tuple[int, float]:
        """Updates waiting, and the age in seconds of the oldest (0 when none)."""
        count, age_ms = await self._run(lambda: self._stats(keys=[self.order, self.since]))
        return int(count), int(age_ms) / 1000

    async def waiting(self, updates: Sequence[Update]) -> list[Update]:
        """Those of ``updates`` still queued with the same value."""
        if not updates:
            return []
        ids = [u.session_id for u in updates]
        raw = await self._run(lambda: self.redis.hmget(self.values, ids))
        return [
            u
            for u, v in zip(updates, raw, strict=True)
            if v is not None and v.decode() == u.encode()
        ]
