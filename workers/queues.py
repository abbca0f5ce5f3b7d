"""Laravel's Redis queue layout and its Lua scripts, one atomic step each.

Keys per queue ``NAME`` (all under ``REDIS_PREFIX``): ``queues:NAME`` (list, RPUSH/LPOP),
``queues:NAME:notify`` (one element per push, for BLPOP), ``queues:NAME:delayed`` (zset by
due time) and ``queues:NAME:reserved`` (zset by reservation expiry). The scripts follow
``Illuminate\\Queue\\LuaScripts``; :data:`RESERVE` is its ``migrateExpiredJobs`` + ``pop``
for several queues and several jobs in one round trip, in priority order.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from workers.jobs import Job, decode, pushed_at

# KEYS: per queue, in priority order: queue, reserved, delayed, notify.
# ARGV: now, reservation expiry (now + retry_after), most jobs to take, migration batch.
# Per queue: move due delayed jobs and expired reservations back onto the list (as
# migrateExpiredJobs, one notify element each), then pop as LuaScripts::pop does: attempts + 1,
# the re-encoded job into :reserved, one notify element popped. A payload cjson cannot
# take is reserved unchanged and flagged 0 so the worker fails it instead of losing it
# (Laravel's own pop script would raise after the LPOP and drop it).
# Returns a flat list: queue index (1-based), reserved string, counted flag.
RESERVE = """
local now, expiry = ARGV[1], ARGV[2]
local want, batch = tonumber(ARGV[3]), tonumber(ARGV[4])
local out = {}
local function migrate(from, to, notify)
  local due = redis.call('zrangebyscore', from, '-inf', now, 'limit', 0, batch)
  if #due > 0 then
    redis.call('zremrangebyrank', from, 0, #due - 1)
    for i = 1, #due, 100 do
      local last = math.min(i + 99, #due)
      redis.call('rpush', to, unpack(due, i, last))
      for _ = i, last do redis.call('rpush', notify, 1) end
    end
  end
end
local function count(job)
  if not string.find(job, '^%s*{') then return nil end
  local ok, decoded = pcall(cjson.decode, job)
  if not ok or type(decoded) ~= 'table' then return nil end
  decoded['attempts'] = (tonumber(decoded['attempts']) or 0) + 1
  local encoded_ok, encoded = pcall(cjson.encode, decoded)
  if not encoded_ok then return nil end
  return encoded
end
local taken = 0
for k = 1, #KEYS, 4 do
  local queue, reserved, delayed, notify = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  migrate(delayed, queue, notify)
  migrate(reserved, queue, notify)
  while taken < want do
    local job = redis.call('lpop', queue)
    if not job then break end
    local counted = count(job)
    redis.call('zadd', reserved, expiry, counted or job)
    redis.call('lpop', notify)
    out[#out + 1] = (k + 3) / 4
    out[#out + 1] = counted or job
    out[#out + 1] = counted and 1 or 0
    taken = taken + 1
  end
  if taken >= want then break end
end
return out
"""

# LuaScripts::push: the job onto the list and one element onto :notify (Laravel's pushRaw).
PUSH = """
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('rpush', KEYS[2], 1)
return 1
"""

# LuaScripts::release, generalised: ARGV[1] leaves :reserved, ARGV[3] enters :delayed with
# score ARGV[2]. They differ only when the payload is rewritten (a paced job gets its
# attempt back). A reservation that expired meanwhile belongs to whoever took the job again:
# releasing it too would leave two copies of the job.
RELEASE = """
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('zadd', KEYS[1], ARGV[2], ARGV[3])
return 1
"""

MIGRATION_BATCH = 1000


@dataclass(frozen=True, slots=True)
class QueueKeys:
    """The four Redis keys of one Laravel queue."""

    prefix: str
    name: str

    @property
    def list(self) -> str:
        return f"{self.prefix}queues:{self.name}"

    @property
    def notify(self) -> str:
        return f"{self.list}:notify"

    @property
    def delayed(self) -> str:
        return f"{self.list}:delayed"

    @property
    def reserved(self) -> str:
        return f"{self.list}:reserved"


@dataclass(frozen=True, slots=True)
class Depth:
    """How many jobs a queue holds in each state, and the age of its head job."""

    queue: str
    waiting: int
    delayed: int
    reserved: int
    oldest_age: float | None  # seconds; None when empty or the head job has no push time


def failed_key(prefix: str) -> str:
    """The Redis list of failed jobs (see :mod:`workers.failed`)."""
    return f"{prefix}queues:failed"


class Queues:
    """The queues one pool drains, in priority order."""

    def __init__(self, redis: aioredis.Redis, prefix: str, names: Sequence[str]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = [QueueKeys(prefix, name) for name in names]
        self._reserve_keys = [
            key for q in self.keys for key in (q.list, q.reserved, q.delayed, q.notify)
        ]
        self._notify_keys = [q.notify for q in self.keys]
        self._reserve = redis.register_script(RESERVE)
        self._push = redis.register_script(PUSH)
        self._release = redis.register_script(RELEASE)

    def of(self, queue: str) -> QueueKeys:
        return QueueKeys(self.prefix, queue)

    async def reserve(self, count: int, retry_after: float) -> list[Job]:
        """Take up to ``count`` jobs, earlier queues first, reserved until now + retry_after."""
        now = time.time()
        flat = await self._reserve(
            keys=self._reserve_keys,
            args=[repr(now), repr(now + retry_after), count, MIGRATION_BATCH],
        )
        return [
            Job.reserved(self.keys[int(flat[i]) - 1].name, flat[i + 1], flat[i + 2] == 1)
            for i in range(0, len(flat), 3)
        ]

    async def wait(self, timeout: float) -> None:
        """Block until a job is pushed to any of the queues, or ``timeout`` seconds pass."""
        await self.redis.blpop(self._notify_keys, timeout=timeout)

    async def push(self, queue: str, payload: bytes) -> None:
        """Exactly Laravel's ``pushRaw``."""
        keys = self.of(queue)
        await self._push(keys=[keys.list, keys.notify], args=[payload])

    async def later(self, queue: str, payload: bytes, delay: float) -> None:
        """Laravel's ``laterRaw``: into ``:delayed``, due in ``delay`` seconds."""
        await self.redis.zadd(self.of(queue).delayed, {payload: time.time() + delay})

    async def release(self, job: Job, delay: float, payload: bytes | None = None) -> None:
        """Move a reserved job to ``:delayed``, optionally rewritten, in one step."""
        keys = self.of(job.queue)
        await self._release(
            keys=[keys.delayed, keys.reserved],
            args=[job.raw, repr(time.time() + delay), payload or job.raw],
        )

    async def delete(self, job: Job) -> None:
        """Done: drop the reservation (by the exact reserved string)."""
        await self.redis.zrem(self.of(job.queue).reserved, job.raw)

    async def extend(self, job: Job, retry_after: float) -> None:
        """Push a running job's reservation expiry out again (only if still reserved)."""
        await self.redis.zadd(
            self.of(job.queue).reserved, {job.raw: time.time() + retry_after}, xx=True
        )

    async def depths(self) -> list[Depth]:
        """Waiting, delayed and reserved counts and the head job's age, per queue."""
        async with self.redis.pipeline(transaction=False) as pipe:
            for q in self.keys:
                pipe.llen(q.list).zcard(q.delayed).zcard(q.reserved).lindex(q.list, 0)
            replies = await pipe.execute()
        now = time.time()
        depths = []
        for i, q in enumerate(self.keys):
            waiting, delayed, reserved, head = replies[4 * i : 4 * i + 4]
            depths.append(Depth(q.name, waiting, delayed, reserved, _age(head, now)))
        return depths


def _age(head: bytes | None, now: float) -> float | None:
    if head is None:
        return None
    try:
        pushed = pushed_at(decode(head))
    except ValueError:
        return None
    return None if pushed is None else max(0.0, now - pushed)
