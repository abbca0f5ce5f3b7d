"""Laravel's Redis queue layout and its Lua scripts, one atomic step each.

Keys per queue ``NAME`` (all under ``REDIS_PREFIX``): ``queues:NAME`` (list, RPUSH/LPOP),
``queues:NAME:notify`` (one element per push, for BLPOP), ``queues:NAME:delayed`` (zset by
due time) and ``queues:NAME:reserved`` (zset by reservation expiry). The scripts follow
``Illuminate\\Queue\\LuaScripts``; :data:`RESERVE` is its ``migrateExpiredJobs`` + ``pop``
for several queues and several jobs in one round trip, in priority order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis.asyncio as aioredis

from gateway.shared.laravel.jobs import Job, decode, pushed_at
from gateway.shared.redis_url import glob_escape, hash_tag

# Lua: the session a job's sends are paced by, or nil: ``data.session_id`` (a string or an
# integer), else, for a job Laravel's dispatch() made, the first public ``sessionId`` or
# ``session_id`` property in the serialized command (PHP writes a public property as
# ``s:9:"sessionId";s:2:"s1";``, or ``i:7;`` for an integer), read without PHP.
PACE_SESSION = """
local function command_session(command)
  for _, name in ipairs({'sessionId', 'session_id'}) do
    local key = 's:' .. #name .. ':"' .. name .. '";'
    local _, stop, length = string.find(command, key .. 's:(%d+):"', 1)
    if stop and tonumber(length) > 0 then
      return string.sub(command, stop + 1, stop + tonumber(length))
    end
    local number = string.match(command, key .. 'i:(%-?%d+);')
    if number then return number end
  end
  return nil
end
local function pace_session(decoded)
  local data = decoded['data']
  if type(data) ~= 'table' then return nil end
  local session = data['session_id']
  if type(session) == 'string' and session ~= '' then return session end
  if type(session) == 'number' and session == math.floor(session) then
    return string.format('%.0f', session)
  end
  if type(data['command']) == 'string' then return command_session(data['command']) end
  return nil
end
"""

# Lua: whether a job runs in PHP, as :func:`workers.php.is_php_job` and the pool decide: its
# name is ``Class@method`` or ``Class`` and no Python handler (the set ``python``) has it.
RUNS_IN_PHP = r"""
local function php_name(name)
  local class, method = string.match(name, '^\\?([^@]+)@([^@]+)$')
  if not class then class, method = string.match(name, '^\\?([^@]+)$'), 'fire' end
  if not class or not string.find(method, '^[%a_][%w_]*$') then return false end
  for part in string.gmatch(class .. '\\', '([^\\]*)\\') do
    if not string.find(part, '^[%a_][%w_]*$') then return false end
  end
  return true
end
local function runs_in_php(decoded)
  local name = decoded['job']
  return type(name) == 'string' and not python[name] and php_name(name)
end
"""

# KEYS: per queue, in priority order: queue, reserved, delayed, notify; then the pacing hash
# and its expiry set (:func:`pacing_keys`). Every key the script touches is one of them, so on
# Redis Cluster it runs wherever they live, once they share a slot (one hash tag).
# ARGV: now, reservation expiry (now + retry_after), most jobs to take, batch (most jobs
# migrated, paced or left per queue and call), pacing tolerance in ms, how many PHP jobs may
# be taken (-1: no limit), then per queue its pacing interval in ms (0: not paced), then the
# names of the Python handlers (they win over PHP).
# PHP jobs: only as many are taken as the pool has PHP processes free; the others stay in
# their queue, in their place, unpaced (their notify elements are taken: the pool wakes itself
# when a process frees), while later jobs that run in Python are taken past them. So a job
# waiting for a PHP process holds no pool slot and no pace slot, and PHP jobs start in queue
# priority order, FIFO within a queue.
# Per queue: move due delayed jobs and expired reservations back onto the list (as
# migrateExpiredJobs, one notify element each), then pop as LuaScripts::pop does: attempts + 1,
# the re-encoded job into :reserved, one notify element popped. A payload cjson cannot
# take is reserved unchanged and flagged 0 so the worker fails it instead of losing it
# (Laravel's own pop script would raise after the LPOP and drop it).
# Pacing, all of it on Redis' clock (TIME), so hosts whose clocks disagree still space sends.
# A session (see pace_session) has one entry in the pacing hash: ``next shift`` (ms), for
# every paced queue. A job popped on a paced queue with a pool slot free runs if the session
# may send now; else it is handed the session's next slot in pop order (slot = max(now,
# next); next = slot + interval) and goes to :delayed scored at it, carrying ``paceSlot`` (the
# slot less the session's shift) and its attempts unchanged. Back from :delayed it is due at
# paceSlot + shift: on time (within the tolerance) it runs without asking again; early (a
# `queue:work` next to the pool migrates on its own host's clock, or the session's slots moved)
# it waits for that time; late (the pool was busy when it fell due) it runs now, and the
# lateness is added to the shift, which moves every later slot of the session by as much. So
# a session's jobs leave in the order they were popped, never closer than the interval less
# the tolerance, and none is popped more than twice while the pool keeps up. The reserved copy drops
# ``paceSlot``. :delayed is migrated on Redis' clock for the same reason.
# Returns a flat list: per job its queue index (1-based), reserved string, a flag (1
# counted, 0 unreadable, 2 paced: strings false) and the string as popped; then whether the
# batch stopped the call early (1/0), how many PHP jobs were left for want of a PHP process,
# then how many seconds (Redis' clock) until the earliest
# due time left in the :delayed sets (false when none or when jobs were taken).
RESERVE = (
    """
if redis.replicate_commands then redis.replicate_commands() end  -- TIME before writes (Redis < 5)
local now, expiry = tonumber(ARGV[1]), ARGV[2]
local want, batch = tonumber(ARGV[3]), tonumber(ARGV[4])
local tolerance, php_free = tonumber(ARGV[5]), tonumber(ARGV[6])
local queues = (#KEYS - 2) / 4
local pacing, pacing_due = KEYS[#KEYS - 1], KEYS[#KEYS]
local python = {}
for i = 7 + queues, #ARGV do python[ARGV[i]] = true end
local clock = redis.call('time')
local clock_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local clock_s = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
-- Sessions whose next slot is past hold no slot any more: their entries go.
local past = redis.call('zrangebyscore', pacing_due, '-inf', clock_ms, 'limit', 0, 100)
if #past > 0 then
  redis.call('hdel', pacing, unpack(past))
  redis.call('zrem', pacing_due, unpack(past))
end
local out = {}
local function decode(job)
  if not string.find(job, '^%s*{') then return nil end
  local ok, decoded = pcall(cjson.decode, job)
  if not ok or type(decoded) ~= 'table' then return nil end
  return decoded
end
local function encode(decoded)
  local ok, encoded = pcall(cjson.encode, decoded)
  if ok then return encoded end
  return nil
end
"""
    + PACE_SESSION
    + RUNS_IN_PHP
    + """
-- A member not yet in :reserved: identical payloads popped (three empty strings) are each
-- kept and settled on their own. Only a repeat changes: a JSON job gets ``reservedCopy``
-- (dropped on its next pop), anything else a suffix; a normal job, whose uuid makes it
-- unique, stays exactly the payload, as Laravel's pop leaves it.
local function unique_member(reserved, member, decoded, job)
  local n = 0
  while redis.call('zscore', reserved, member) do
    n = n + 1
    if decoded then
      decoded['reservedCopy'] = n
      member = encode(decoded)
    else
      member = job .. '\\n#' .. n
    end
  end
  return member
end
-- A session's next free slot and its shift (ms); 0, 0 for a session holding none.
local function pace_state(session)
  local entry = redis.call('hget', pacing, session)
  if not entry then return 0, 0 end
  local next_free, shift = string.match(entry, '^(%-?%d+) (%-?%d+)$')
  return tonumber(next_free) or 0, tonumber(shift) or 0
end
local function set_pace(session, next_free, shift)
  redis.call('hset', pacing, session, string.format('%.0f %.0f', next_free, shift))
  redis.call('zadd', pacing_due, next_free, session)
end
-- nil when the job may run now; else the slot it holds (``paceSlot``) and when it is due,
-- in ms on Redis' clock.
local function wait_slot(decoded, interval)
  if interval <= 0 then return nil end
  local session = pace_session(decoded)
  if not session then return nil end
  local next_free, shift = pace_state(session)
  local held = tonumber(decoded['paceSlot'])
  if held then
    local due = held + shift
    local slack = math.min(tolerance, interval / 2)
    if due > clock_ms + slack then return held, due end  -- early: wait for it
    if due < clock_ms - slack then  -- late: now, and every later slot moves as much
      local late = clock_ms - due
      set_pace(session, math.max(next_free + late, clock_ms + interval), shift + late)
    end
    return nil
  end
  local due = math.max(clock_ms, next_free)
  set_pace(session, due + interval, shift)
  if due <= clock_ms then return nil end
  return due - shift, due
end
-- Move due jobs back onto the list, one notify element each. On a paced queue (``slack``
-- given), paced jobs due together go in the order their slots were handed out (``paceSlot``),
-- not by score, and one whose session's slots moved since it was scored (or move now, for a
-- late job of its session ahead of it) is scored again at its slot's new time instead: it
-- waits on in :delayed, not popped for nothing.
local function migrate(from, to, notify, upto, slack)
  local found = redis.call('zrangebyscore', from, '-inf', upto, 'withscores', 'limit', 0, batch)
  if #found == 0 then return end
  redis.call('zremrangebyrank', from, 0, #found / 2 - 1)
  local entries = {}
  for i = 1, #found, 2 do
    local job, place, session = found[i], tonumber(found[i + 1]) * 1000, nil
    local slot = slack and tonumber(string.match(job, '"paceSlot":(%-?%d+)'))
    if slot then
      local decoded = decode(job)
      session = decoded and pace_session(decoded)
      place = slot
    end
    entries[#entries + 1] = {place, #entries + 1, job, session, slot}
  end
  table.sort(entries, function(a, b) return a[1] < b[1] or (a[1] == b[1] and a[2] < b[2]) end)
  local shifts, due = {}, {}
  for _, entry in ipairs(entries) do
    local job, session, slot = entry[3], entry[4], entry[5]
    local at = nil
    if session then
      if not shifts[session] then
        local _, shift = pace_state(session)
        shifts[session] = shift
      end
      at = slot + shifts[session]
    end
    if at and at > clock_ms + slack then
      redis.call('zadd', from, at / 1000, job)
    else
      if at and at < clock_ms - slack then shifts[session] = shifts[session] + clock_ms - at end
      due[#due + 1] = job
    end
  end
  for i = 1, #due, 100 do
    local last = math.min(i + 99, #due)
    redis.call('rpush', to, unpack(due, i, last))
    for _ = i, last do redis.call('rpush', notify, 1) end
  end
end
local taken, more, php_left = 0, 0, 0
for k = 1, 4 * queues, 4 do
  local queue, reserved, delayed, notify = KEYS[k], KEYS[k + 1], KEYS[k + 2], KEYS[k + 3]
  local index, interval = (k + 3) / 4, tonumber(ARGV[6 + (k + 3) / 4])
  migrate(delayed, queue, notify, clock_s, interval > 0 and math.min(tolerance, interval / 2))
  migrate(reserved, queue, notify, now, nil)
  local paced, left = 0, {}
  while taken < want and #left < batch do
    if paced >= batch then more = 1 break end
    local job = redis.call('lpop', queue)
    if not job then break end
    redis.call('lpop', notify)
    local decoded = decode(job)
    if decoded then decoded['reservedCopy'] = nil end
    local php = decoded and php_free >= 0 and runs_in_php(decoded)
    local leave, slot, due, waiting = php and php_free == 0, nil, nil, nil
    if leave then
      left[#left + 1] = job  -- no PHP process free: it stays in its place, unpaced
    elseif decoded then
      slot, due = wait_slot(decoded, interval)
      if slot then
        decoded['paceSlot'] = slot
        waiting = encode(decoded)
      end
    end
    if leave then
      -- put back below, in order
    elseif waiting then
      redis.call('zadd', delayed, due / 1000, waiting)
      paced = paced + 1
      out[#out + 1] = index
      out[#out + 1] = false
      out[#out + 1] = 2
      out[#out + 1] = false
    else
      local counted = nil
      if decoded then
        decoded['paceSlot'] = nil
        decoded['attempts'] = (tonumber(decoded['attempts']) or 0) + 1
        counted = encode(decoded)
      end
      local member = unique_member(reserved, counted or job, counted and decoded, job)
      redis.call('zadd', reserved, expiry, member)
      out[#out + 1] = index
      out[#out + 1] = member
      out[#out + 1] = counted and 1 or 0
      out[#out + 1] = job
      taken = taken + 1
      if php then php_free = php_free - 1 end
    end
  end
  for i = #left, 1, -1 do redis.call('lpush', queue, left[i]) end
  php_left = php_left + #left
  if taken >= want or more == 1 then break end
end
out[#out + 1] = more
out[#out + 1] = php_left
local earliest = false
if taken == 0 and more == 0 then
  for k = 3, 4 * queues, 4 do
    local head = redis.call('zrange', KEYS[k], 0, 0, 'withscores')
    if head[2] and (not earliest or tonumber(head[2]) < earliest) then
      earliest = tonumber(head[2])
    end
  end
end
out[#out + 1] = earliest and tostring(earliest - clock_s)
return out
"""
)

# LuaScripts::push: the job onto the list and one element onto :notify (Laravel's pushRaw).
PUSH = """
redis.call('rpush', KEYS[1], ARGV[1])
redis.call('rpush', KEYS[2], 1)
return 1
"""

# Lua: ``due``, Redis' time (s) plus ARGV[2] seconds: :delayed is migrated on Redis' clock.
DUE = """
local clock = redis.call('time')
local due = tonumber(clock[1]) + tonumber(clock[2]) / 1000000 + tonumber(ARGV[2])
"""

# LuaScripts::release: ARGV[1] leaves :reserved and enters :delayed, due in ARGV[2] seconds. A
# reservation that expired meanwhile belongs to whoever took the job again: releasing it
# too would leave two copies of the job. One notify element wakes an idle pool, which then
# learns the new due time and wakes for it (Laravel's release does not notify).
RELEASE = (
    DUE
    + """
if redis.call('zrem', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('zadd', KEYS[1], due, ARGV[1])
redis.call('rpush', KEYS[3], 1)
return 1
"""
)

# Laravel's laterRaw (a ZADD to :delayed, due in ARGV[2] seconds), plus a notify element as
# for RELEASE.
LATER = (
    DUE
    + """
redis.call('zadd', KEYS[1], due, ARGV[1])
redis.call('rpush', KEYS[2], 1)
return 1
"""
)

MIGRATION_BATCH = 1000
# How far from its slot a paced job may start and still count as on time (ms; at most half
# the interval): a job back later than this asks for a new slot.
PACE_TOLERANCE_MS = 50


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
    """The Redis list of failed jobs (see :mod:`gateway.shared.laravel.failed`)."""
    return f"{prefix}queues:failed"


def pending_key(prefix: str) -> str:
    """The Redis list of failures waiting for MySQL (see :mod:`gateway.shared.laravel.failed`)."""
    return f"{prefix}queues:failed-pending"


def pacing_keys(key_prefix: str, queues: Sequence[QueueKeys]) -> tuple[str, str]:
    """The pacing hash (session -> ``next shift``, ms) and its expiry set (session -> next).

    :data:`RESERVE` touches them with the queues' keys, so on Redis Cluster they carry the
    queues' hash tag when every queue has the same one (Laravel's advice there: queue names
    such as ``{wa}messaging``); queues in several slots cannot be taken in one step.
    """
    tags = {hash_tag(q.list) for q in queues}
    tag = tags.pop() if len(tags) == 1 else None
    suffix = f":{{{tag}}}" if tag else ""
    return f"{key_prefix}workers:pacing{suffix}", f"{key_prefix}workers:pacing-due{suffix}"


def old_pace_prefix(key_prefix: str) -> str:
    """Before :func:`pacing_keys`, one string per session under this prefix (its next ms)."""
    return f"{key_prefix}workers:pace:"


# KEYS: a session's old pacing key, the pacing hash, its expiry set. ARGV: the session.
# The session's next slot moves into the hash, shift 0 (slots were handed out unshifted),
# unless the hash already has the session; the old key goes either way.
ADOPT_PACE = """
local next_free = redis.call('get', KEYS[1])
redis.call('del', KEYS[1])
if not next_free or redis.call('hexists', KEYS[2], ARGV[1]) == 1 then return 0 end
redis.call('hset', KEYS[2], ARGV[1], next_free .. ' 0')
redis.call('zadd', KEYS[3], next_free, ARGV[1])
return 1
"""


@dataclass(frozen=True, slots=True)
class Take:
    """What one :data:`RESERVE` call did."""

    jobs: list[Job]
    paced: list[str]  # the queue of each job sent to :delayed to wait for its slot
    more: bool  # stopped at the batch limit with jobs left: take again at once
    next_due: float | None  # nothing taken: when the earliest delayed job is due (this
    # host's clock; reckoned from Redis', on which :delayed is migrated)
    php_left: int = 0  # PHP jobs left in their queues: no PHP process was free


class Queues:
    """The queues one pool drains, in priority order, paced per session where configured."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        names: Sequence[str],
        *,
        key_prefix: str = "",
        intervals: Mapping[str, float] | None = None,
        clock: Callable[[], float] = time.time,
        python_jobs: Iterable[str] = (),
    ) -> None:
        self.redis = redis
        self.clock = clock  # this host's: reservations only; pacing and :delayed use Redis'

        self.prefix = prefix
        self.keys = [QueueKeys(prefix, name) for name in names]
        self.key_prefix = key_prefix
        self.pacing = pacing_keys(key_prefix, self.keys)
        self._reserve_keys = [
            key for q in self.keys for key in (q.list, q.reserved, q.delayed, q.notify)
        ] + list(self.pacing)
        intervals = intervals or {}
        self._intervals = [max(0, round(float(intervals.get(name, 0)) * 1000)) for name in names]
        self._python_jobs = sorted(python_jobs)
        self._notify_keys = [q.notify for q in self.keys]
        self._reserve = redis.register_script(RESERVE)
        self._push = redis.register_script(PUSH)
        self._release = redis.register_script(RELEASE)
        self._later = redis.register_script(LATER)
        self._adopt = redis.register_script(ADOPT_PACE)

    async def adopt_old_pacing(self) -> int:
        """Move the per-session pacing keys an earlier version left into the pacing hash, so
        the slots its jobs in ``:delayed`` hold keep the session's next sends spaced."""
        old = old_pace_prefix(self.key_prefix)
        adopted = 0
        async for key in self.redis.scan_iter(match=f"{glob_escape(old)}*", count=1000):
            session = key[len(old) :] if isinstance(key, str) else key[len(old.encode()) :]
            adopted += await self._adopt(keys=[key, *self.pacing], args=[session])
        return adopted

    def of(self, queue: str) -> QueueKeys:
        return QueueKeys(self.prefix, queue)

    async def reserve(self, count: int, retry_after: float, php_free: int = -1) -> Take:
        """Take up to ``count`` jobs, earlier queues first, reserved until now + retry_after;
        of the jobs that run in PHP at most ``php_free`` (-1: no limit)."""
        now = self.clock()
        flat = await self._reserve(
            keys=self._reserve_keys,
            args=[
                repr(now),
                repr(now + retry_after),
                count,
                MIGRATION_BATCH,
                PACE_TOLERANCE_MS,
                php_free,
                *self._intervals,
                *self._python_jobs,
            ],
        )
        *entries, more, php_left, due = flat
        jobs, paced = [], []
        for i in range(0, len(entries), 4):
            queue = self.keys[int(entries[i]) - 1].name
            if entries[i + 2] == 2:
                paced.append(queue)
            else:
                jobs.append(
                    Job.reserved(queue, entries[i + 1], entries[i + 2] == 1, entries[i + 3])
                )
        next_due = None if due is None else self.clock() + float(due)
        return Take(jobs, paced, more == 1, next_due, php_left)

    async def wait(self, timeout: float) -> None:
        """Block until a job is pushed to any of the queues, or ``timeout`` seconds pass."""
        await self.redis.blpop(self._notify_keys, timeout=timeout)

    async def push(self, queue: str, payload: bytes) -> None:
        """Exactly Laravel's ``pushRaw``."""
        keys = self.of(queue)
        await self._push(keys=[keys.list, keys.notify], args=[payload])

    async def later(self, queue: str, payload: bytes, delay: float) -> None:
        """Laravel's ``laterRaw``: into ``:delayed``, due in ``delay`` seconds."""
        keys = self.of(queue)
        await self._later(keys=[keys.delayed, keys.notify], args=[payload, repr(delay)])

    async def release(self, job: Job, delay: float) -> None:
        """Move a reserved job to ``:delayed``, due in ``delay`` seconds, in one step."""
        keys = self.of(job.queue)
        await self._release(
            keys=[keys.delayed, keys.reserved, keys.notify],
            args=[job.raw, repr(delay)],
        )

    async def delete(self, job: Job) -> None:
        """Done: drop the reservation (by the exact reserved string)."""
        await self.redis.zrem(self.of(job.queue).reserved, job.raw)

    async def extend(self, jobs: Iterable[Job], retry_after: float) -> None:
        """Push the jobs' reservations out to now + retry_after, in one round trip; a job no
        longer reserved (settled, or taken back after expiring) is left alone."""
        expiry = time.time() + retry_after
        by_queue: dict[str, dict[bytes, float]] = {}
        for job in jobs:
            by_queue.setdefault(job.queue, {})[job.raw] = expiry
        async with self.redis.pipeline(transaction=False) as pipe:
            for queue, members in by_queue.items():
                pipe.zadd(self.of(queue).reserved, members, xx=True)
            await pipe.execute()

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
