"""Sessions counted per instance, and placement reservations made atomically in Redis.

Each ``Instance.sessions`` mirrors the shared ``active`` hash. Placement runs as one Lua
script, so concurrent placements from several gateway processes see each other's
reservations; while Redis is away the same rule runs on this process's counts.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.decisions.placement import least_loaded
from gateway.shared.redis_url import adopt_renamed
from gateway.state.instances import Fleet
from gateway.state.link import Backlog, RedisLink, Unavailable

# Reserve a place on the least-loaded eligible instance. Load = confirmed active sessions +
# placements still in flight (a sorted set of tokens scored by expiry, so a crashed process
# cannot leak them). Mirrors decisions.placement.least_loaded; atomic across processes.
# KEYS[1] active hash; KEYS[1+i] in-flight set of the i-th eligible instance.
# ARGV: now, expiry, limit, token, preferred ('' = none), eligible urls...
PLACE = """
local now, expiry, limit = tonumber(ARGV[1]), ARGV[2], tonumber(ARGV[3])
local best, best_load, best_key
for i = 6, #ARGV do
  local key = KEYS[i - 4]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local load = tonumber(redis.call('HGET', KEYS[1], ARGV[i]) or '0') + redis.call('ZCARD', key)
  if load < limit then
    if ARGV[i] == ARGV[5] then
      best, best_key = ARGV[i], key
      break
    end
    if best == nil or load < best_load then best, best_load, best_key = ARGV[i], load, key end
  end
end
if best then redis.call('ZADD', best_key, expiry, ARGV[4]) end
return best
"""

# A placement came true (the instance created the session): count it as active.
# KEYS: active hash, in-flight set. ARGV: url, token.
CONFIRM = """
redis.call('ZREM', KEYS[2], ARGV[2])
return redis.call('HINCRBY', KEYS[1], ARGV[1], 1)
"""

# A session went away: one fewer active, never below zero. KEYS: active hash. ARGV: url.
RELEASE = """
local n = redis.call('HINCRBY', KEYS[1], ARGV[1], -1)
if n < 0 then redis.call('HSET', KEYS[1], ARGV[1], 0); n = 0 end
return n
"""


@dataclass(frozen=True)
class Placement:
    url: str
    token: str
    in_redis: bool


class Counts:
    """Active session counts of all processes, and the reservations of new sessions."""

    def __init__(self, link: RedisLink, fleet: Fleet, reservation_ttl: float) -> None:
        self.link, self.fleet, self.reservation_ttl = link, fleet, reservation_ttl
        self.keys = link.keys
        self._place = link.redis.register_script(PLACE)
        self._confirm = link.redis.register_script(CONFIRM)
        self._release = link.redis.register_script(RELEASE)
        link.on_back(self._reload)

    def _count(self, url: str) -> int:
        instance = self.fleet.get(url)
        return instance.sessions if instance is not None else 0

    def _set(self, url: str, count: int) -> None:
        instance = self.fleet.get(url)
        if instance is not None:
            instance.sessions = count

    async def place(
        self, eligible: Sequence[str], limit: int, preferred: str | None
    ) -> Placement | None:
        """Reserve room for a new session; ``confirm`` or ``abandon`` once the instance answered."""
        token = uuid.uuid4().hex
        if not eligible:
            return None
        now = time.time()
        keys = [self.keys.active, *(self.keys.placing(u) for u in eligible)]
        args = [now, now + self.reservation_ttl, limit, token, preferred or "", *eligible]
        try:
            raw = await self.link.run(lambda: self._place(keys=keys, args=args))
        except Unavailable:
            url = least_loaded(eligible, self.fleet.loads(), limit, preferred)
            if url is None:
                return None
            self._set(url, self._count(url) + 1)
            return Placement(url, token, in_redis=False)
        return Placement(raw.decode(), token, in_redis=True) if raw else None

    async def confirm(self, placement: Placement) -> None:
        if not placement.in_redis:
            return
        keys = [self.keys.active, self.keys.placing(placement.url)]
        with contextlib.suppress(Unavailable):
            args = [placement.url, placement.token]
            count = await self.link.run(lambda: self._confirm(keys=keys, args=args))
            self._set(placement.url, int(count))
            return
        self._set(placement.url, self._count(placement.url) + 1)

    async def abandon(self, placement: Placement) -> None:
        if not placement.in_redis:
            self._set(placement.url, max(0, self._count(placement.url) - 1))
            return
        with contextlib.suppress(Unavailable):
            await self.link.run(
                lambda: self.link.redis.zrem(self.keys.placing(placement.url), placement.token)
            )

    async def session_ended(self, url: str) -> None:
        """One fewer active session on ``url`` (the instance confirmed a delete)."""
        self._set(url, max(0, self._count(url) - 1))
        with contextlib.suppress(Unavailable):
            count = await self.link.run(lambda: self._release(keys=[self.keys.active], args=[url]))
            self._set(url, int(count))

    async def set_active(self, url: str, count: int) -> None:
        """Correct a count from the instance's own report."""
        self._set(url, count)
        with contextlib.suppress(Unavailable):
            await self.link.run(lambda: self.link.redis.hset(self.keys.active, url, count))

    async def _reload(self, backlog: Backlog) -> Backlog:
        await adopt_renamed(self.link.redis, self.keys.renamed)
        for url, count in (await self.link.redis.hgetall(self.keys.active)).items():
            self._set(url.decode(), int(count))
        return backlog
