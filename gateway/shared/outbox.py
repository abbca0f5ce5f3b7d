"""The webhook outbox: every accepted event durably in Redis until the backend took it.

Events wait in *lanes*, one list per session (plus one shared lane for events without a
session), so a session's events go out one at a time, in the order they were received, and a
session whose events keep failing holds up no other. A sorted set says when each non-empty
lane may next be tried: at once for fresh events, later while its head waits for a retry,
and at the lease's end while a worker delivers its head. A worker that dies mid-delivery
therefore only holds its lanes until their leases run out; then the head goes out again.

Keys, under ``<key_prefix>{webhooks}:`` (one hash tag: on Redis Cluster the outbox is one
slot, so a script may touch a lane, its events and the sets together):

=================  ======  ==============================================================
``event:<id>``     hash    path, body, instance, content_type, event, lane, received,
                           since (start of the retry window), attempts, headers (JSON:
                           what the backend is shown besides the body); plus status,
                           error and dead_at once dead-lettered
``lane:<lane>``    list    ids waiting in the lane, oldest first
``lanes``          zset    lane -> when its head may next be tried
``leases``         hash    lane -> token of the worker delivering its head
``pending``        zset    id -> receive time: the backlog, oldest first
``dead``           zset    id -> when it was dead-lettered
``replay:<sig>``   string  id of the event kept for a signature, while its timestamp holds
``last:<lane>``    string  identity and id of the lane's last kept event (repeat window)
=================  ======  ==============================================================

``<key_prefix>webhooks:wake`` (pub/sub) is published on each new event, so idle workers
start at once. Each change is one Lua script, so a crash between two writes cannot leave an
event in no lane or in two. Every key a script touches is in its ``KEYS``: where the keys
depend on what Redis holds (the heads of due lanes, a dead letter's lane), the caller reads
them first and the script checks they still hold. An earlier version kept the same keys under
``<key_prefix>webhooks:``; :meth:`Outbox.adopt_old_keys` moves them at start-up.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from gateway.shared.redis_url import NotReplicated, adopt_renamed, glob_escape

# KEYS: replay, last, event, lane list, lanes, pending. ARGV: id, now, replay mark's life in
# ms (0: no mark), repeat window in ms (0: no repeats), the event's identity, lane, wake
# channel, then the event hash as field/value pairs.
# ``replay`` (its signature's key) names the event kept for those signed bytes; ``last`` is
# the identity and id of the lane's last kept event, for the repeat window. Returns false
# for a new event, else {'replay' or 'repeat', id of the event it repeats}.
RECEIVE = """
if ARGV[3] ~= '0' then
  local kept = redis.call('get', KEYS[1])
  if kept then return {'replay', kept} end
end
local id = ARGV[1]
if ARGV[4] ~= '0' then
  local last = redis.call('get', KEYS[2])
  local n = #ARGV[5]
  if last and string.sub(last, 1, n) == ARGV[5] then id = string.sub(last, n + 2) end
end
if ARGV[3] ~= '0' then redis.call('set', KEYS[1], id, 'PX', ARGV[3]) end
if id ~= ARGV[1] then return {'repeat', id} end
if ARGV[4] ~= '0' then redis.call('set', KEYS[2], ARGV[5] .. ' ' .. id, 'PX', ARGV[4]) end
redis.call('hset', KEYS[3], unpack(ARGV, 8))
redis.call('rpush', KEYS[4], id)
redis.call('zadd', KEYS[5], 'NX', ARGV[2], ARGV[6])
redis.call('zadd', KEYS[6], ARGV[2], id)
redis.call('publish', ARGV[7], 1)
return false
"""

# KEYS: lanes, leases, then per lane its list and the event its head was read to be.
# ARGV: now, lease expiry, token, then per lane its name and that id ('' for none).
# Leases the head of each lane that is still due and still has that head. A head whose hash
# is gone (deleted by hand, or evicted) is dropped and the lane left for the next take, a
# lane found empty leaves the set. Returns {next due time or false, {lane, id, attempts,
# path, body, instance, content_type, received, since, headers}...}; the next due time is
# that of the first lane left in the set (a lease expiry counts: a dead worker's lane).
TAKE = """
local out = {false}
for i = 3, #KEYS, 2 do
  local lane, id = ARGV[i + 1], ARGV[i + 2]
  local list, key = KEYS[i], KEYS[i + 1]
  local due = tonumber(redis.call('zscore', KEYS[1], lane))
  local head = redis.call('lindex', list, 0) or ''
  if due and due <= tonumber(ARGV[1]) and head == id then
    if id == '' then
      redis.call('zrem', KEYS[1], lane)
      redis.call('hdel', KEYS[2], lane)
    elseif redis.call('exists', key) == 0 then
      redis.call('lpop', list)
    else
      redis.call('zadd', KEYS[1], ARGV[2], lane)
      redis.call('hset', KEYS[2], lane, ARGV[3])
      local attempts = redis.call('hincrby', key, 'attempts', 1)
      local f = redis.call(
        'hmget', key, 'path', 'body', 'instance', 'content_type', 'received', 'since',
        'headers')
      out[#out + 1] = {lane, id, attempts, f[1], f[2], f[3], f[4], f[5], f[6], f[7] or ''}
    end
  end
end
local first = redis.call('zrange', KEYS[1], 0, 0, 'withscores')
if first[2] then out[1] = first[2] end
return out
"""

# KEYS: lanes, leases, lane list, event, pending, dead.
# ARGV: lane, id, token, now, outcome (done, retry or dead), retry time, then fields to
# set on the event. Only the holder of the lane's lease may settle its head: a lease that
# ran out and was taken again belongs to the new holder. Returns 1 when settled.
SETTLE = """
if redis.call('hget', KEYS[2], ARGV[1]) ~= ARGV[3] then return 0 end
redis.call('hdel', KEYS[2], ARGV[1])
if #ARGV > 6 then redis.call('hset', KEYS[4], unpack(ARGV, 7)) end
if ARGV[5] == 'retry' then
  redis.call('zadd', KEYS[1], ARGV[6], ARGV[1])
  return 1
end
if redis.call('lindex', KEYS[3], 0) == ARGV[2] then redis.call('lpop', KEYS[3]) end
redis.call('zrem', KEYS[5], ARGV[2])
if ARGV[5] == 'dead' then
  redis.call('zadd', KEYS[6], ARGV[4], ARGV[2])
else
  redis.call('del', KEYS[4])
end
if redis.call('llen', KEYS[3]) > 0 then
  redis.call('zadd', KEYS[1], ARGV[4], ARGV[1])
else
  redis.call('zrem', KEYS[1], ARGV[1])
end
return 1
"""

# KEYS: dead, event, lanes, pending, the lane's list. ARGV: id, now, lane (as the event names
# it: read first), wake channel.
# A dead letter goes to the end of its lane with its attempts and retry window reset.
REQUEUE = """
local lane = redis.call('hget', KEYS[2], 'lane')
if lane ~= ARGV[3] or redis.call('zrem', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('hset', KEYS[2], 'attempts', 0, 'since', ARGV[2])
redis.call('hdel', KEYS[2], 'status', 'error', 'dead_at')
redis.call('rpush', KEYS[5], ARGV[1])
redis.call('zadd', KEYS[3], 'NX', ARGV[2], lane)
redis.call('zadd', KEYS[4], redis.call('hget', KEYS[2], 'received'), ARGV[1])
redis.call('publish', ARGV[4], 1)
return 1
"""

# KEYS: dead, event. ARGV: id. Drops a dead letter (only a dead one).
FORGET = """
if redis.call('zrem', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('del', KEYS[2])
return 1
"""


class OutboxKeys:
    """The outbox's Redis keys, under ``<key_prefix>{webhooks}:``."""

    def __init__(self, key_prefix: str) -> None:
        self.base = f"{key_prefix}{{webhooks}}:"
        self.old_base = f"{key_prefix}webhooks:"  # an earlier version's (no hash tag)
        self.lanes = f"{self.base}lanes"
        self.leases = f"{self.base}leases"
        self.pending = f"{self.base}pending"
        self.dead = f"{self.base}dead"
        self.wake = f"{self.old_base}wake"  # a channel, not a key: the same for both versions

    def lane(self, lane: str) -> str:
        return f"{self.base}lane:{lane}"

    def event(self, event_id: str) -> str:
        return f"{self.base}event:{event_id}"

    def replay(self, signature: str) -> str:
        return f"{self.base}replay:{signature}"

    def last(self, lane: str) -> str:
        return f"{self.base}last:{lane}"


@dataclass(frozen=True, slots=True)
class Incoming:
    """An event the gateway accepted, as it will be delivered."""

    path: str
    body: bytes
    instance: str  # X-Instance-Url as sent ("" when absent)
    content_type: str
    name: str  # the event's name, "" when it has none
    lane: str
    signature: str = ""  # X-HMAC-Signature as verified; "" for none (no replay check)
    sender: str = ""  # the instance it is from, normalised (decisions.webhooks.sender)
    # Delivered with it: X-Instance-Url as the backend is to see it, the real instance, and
    # the instance's X-Forwarded-For and User-Agent. Empty: X-Instance-Url as sent.
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def identity(self) -> str:
        """The same bytes from the same instance: what an instance's own retry repeats.

        Neither the path nor ``X-Instance-Url`` as spelled is signed, so they are left out:
        only the normalised sender tells one instance's event from another's.
        """
        h = hashlib.sha256()
        for part in (self.sender.encode(), self.body):
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)
        return h.hexdigest()


@dataclass(frozen=True, slots=True)
class Duplicate:
    """An event not kept, and the one it repeats."""

    kind: str  # "replay": the same signed bytes; "repeat": a retry within the repeat window
    id: str


@dataclass(frozen=True, slots=True)
class Delivery:
    """The head of a lane, leased to one worker until it is settled or the lease runs out."""

    id: str
    lane: str
    token: str
    attempts: int  # this one included
    path: str
    body: bytes
    instance: str
    content_type: str
    received: float
    since: float  # start of the retry window (receive, or a manual retry)
    headers: tuple[tuple[str, str], ...] = ()  # as Incoming's; () for an event kept before


@dataclass(frozen=True, slots=True)
class DeadLetter:
    id: str
    event: str
    lane: str
    path: str
    instance: str
    received: float
    dead_at: float
    attempts: int
    status: str  # the backend's HTTP status, "" when it gave none
    error: str
    body: bytes


@dataclass(frozen=True, slots=True)
class Backlog:
    waiting: int  # events not yet delivered nor dead-lettered
    lanes: int  # sessions (and the shared lane) with events waiting
    oldest_age: float | None  # seconds since the oldest waiting event was received
    dead: int


def _headers(raw: bytes | None) -> tuple[tuple[str, str], ...]:
    """The kept headers; none for an event kept without them, or a field that is not ours."""
    try:
        pairs = json.loads(raw) if raw else []
    except ValueError:
        return ()
    if not isinstance(pairs, list):
        return ()
    return tuple(
        (p[0], p[1])
        for p in pairs
        if isinstance(p, list) and len(p) == 2 and all(isinstance(x, str) for x in p)
    )


def _text(value: bytes | None) -> str:
    return value.decode("utf-8", "replace") if value is not None else ""


class Outbox:
    def __init__(self, redis: aioredis.Redis, key_prefix: str) -> None:
        self.redis = redis
        self.keys = OutboxKeys(key_prefix)
        self._receive = redis.register_script(RECEIVE)
        self._take = redis.register_script(TAKE)
        self._settle = redis.register_script(SETTLE)
        self._requeue = redis.register_script(REQUEUE)
        self._forget = redis.register_script(FORGET)

    async def adopt_old_keys(self) -> int:
        """Move the keys an earlier version kept under ``<key_prefix>webhooks:`` to their
        hash-tagged names, merged with any the new names hold; how many were moved."""
        old = self.keys.old_base
        renamed = {}
        async for key in self.redis.scan_iter(match=f"{glob_escape(old)}*", count=1000):
            name = _text(key)
            renamed[name] = self.keys.base + name[len(old) :]
        return await adopt_renamed(self.redis, renamed)

    # --- the gateway's side ----------------------------------------------------------------

    async def receive(
        self,
        incoming: Incoming,
        now: float,
        dedup_window: float,
        replay_ttl: float = 0.0,
        replicas: int = 0,
        wait: float = 0.0,
    ) -> Duplicate | None:
        """Store a new event at the end of its lane, unless it repeats one; then that one.

        A replay is the signature of an event kept or dropped within ``replay_ttl``, whatever
        else came with it. A repeat has the identity of the last event kept in its lane,
        less than ``dedup_window`` ago: any other event kept in the lane since then, from
        any instance, makes it a new event. ``0`` turns either check off.
        """
        k, event_id, lane = self.keys, str(uuid.uuid4()), incoming.lane
        fields = {
            "path": incoming.path,
            "body": incoming.body,
            "instance": incoming.instance,
            "content_type": incoming.content_type,
            "event": incoming.name,
            "lane": lane,
            "received": repr(now),
            "since": repr(now),
            "attempts": 0,
        }
        if incoming.headers:
            fields["headers"] = json.dumps(incoming.headers)
        replay_ms = max(1, int(replay_ttl * 1000)) if incoming.signature and replay_ttl > 0 else 0
        found = await self._replicated(
            replicas,
            wait,
            keys=[
                k.replay(incoming.signature),
                k.last(lane),
                k.event(event_id),
                k.lane(lane),
                k.lanes,
                k.pending,
            ],
            args=[
                event_id,
                repr(now),
                replay_ms,
                int(dedup_window * 1000),
                incoming.identity,
                lane,
                k.wake,
                *(x for pair in fields.items() for x in pair),
            ],
        )
        return None if found is None else Duplicate(_text(found[0]), _text(found[1]))

    async def _replicated(self, replicas: int, wait: float, **call: Any) -> Any:
        """The receive script's answer, once ``replicas`` replicas have its writes (``WAIT``
        on the same connection, so it covers them); raises ``NotReplicated`` after ``wait``."""
        if replicas <= 0:
            return await self._receive(**call)
        async with self.redis.pipeline(transaction=False) as pipe:
            await self._receive(client=pipe, **call)
            pipe.execute_command("WAIT", replicas, max(1, int(wait * 1000)))
            found, acked = await pipe.execute()
        if int(acked) < replicas:
            raise NotReplicated(int(acked))
        return found

    # --- the workers' side -----------------------------------------------------------------

    async def take(
        self, most: int, lease: float, now: float
    ) -> tuple[list[Delivery], float | None]:
        """Lease the heads of up to ``most`` due lanes; also when the next lane falls due."""
        token, k = uuid.uuid4().hex, self.keys
        due = await self.redis.zrangebyscore(k.lanes, "-inf", now, 0, most)
        lanes = [_text(lane) for lane in due]
        heads = []
        if lanes:
            async with self.redis.pipeline(transaction=False) as pipe:
                for lane in lanes:
                    pipe.lindex(k.lane(lane), 0)
                heads = [_text(head) for head in await pipe.execute()]
        keys, args = [k.lanes, k.leases], [repr(now), repr(now + lease), token]
        for lane, head in zip(lanes, heads, strict=True):
            keys += [k.lane(lane), k.event(head)]
            args += [lane, head]
        next_due, *rows = await self._take(keys=keys, args=args)
        deliveries = [
            Delivery(
                id=_text(row[1]),
                lane=_text(row[0]),
                token=token,
                attempts=int(row[2]),
                path=_text(row[3]),
                body=row[4] or b"",
                instance=_text(row[5]),
                content_type=_text(row[6]),
                received=float(row[7] or now),
                since=float(row[8] or now),
                headers=_headers(row[9]),
            )
            for row in rows
        ]
        return deliveries, (float(next_due) if next_due else None)

    async def _settle_call(
        self, d: Delivery, now: float, outcome: str, due: float, **fields: str
    ) -> bool:
        k = self.keys
        settled = await self._settle(
            keys=[k.lanes, k.leases, k.lane(d.lane), k.event(d.id), k.pending, k.dead],
            args=[
                d.lane,
                d.id,
                d.token,
                repr(now),
                outcome,
                repr(due),
                *(x for pair in fields.items() for x in pair),
            ],
        )
        return bool(settled)

    async def delivered(self, d: Delivery, now: float) -> bool:
        """The backend took it: drop it, and let the lane's next event go."""
        return await self._settle_call(d, now, "done", now)

    async def retry(self, d: Delivery, now: float, due: float, error: str) -> bool:
        """Keep it at the head of its lane, which waits until ``due``."""
        return await self._settle_call(d, now, "retry", due, error=error)

    async def dead(self, d: Delivery, now: float, status: str, error: str) -> bool:
        """Set it aside with the reason, and let the lane's next event go."""
        return await self._settle_call(
            d, now, "dead", now, status=status, error=error, dead_at=repr(now)
        )

    async def backlog(self, now: float) -> Backlog:
        k = self.keys
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zcard(k.pending).zrange(k.pending, 0, 0, withscores=True)
            pipe.zcard(k.lanes).zcard(k.dead)
            waiting, oldest, lanes, dead = await pipe.execute()
        age = max(0.0, now - oldest[0][1]) if oldest else None
        return Backlog(waiting, lanes, age, dead)

    # --- dead letters ----------------------------------------------------------------------

    async def dead_letters(self) -> list[DeadLetter]:
        """Every dead-lettered event, oldest first."""
        ids = [_text(i) for i in await self.redis.zrange(self.keys.dead, 0, -1)]
        async with self.redis.pipeline(transaction=False) as pipe:
            for event_id in ids:
                pipe.hgetall(self.keys.event(event_id))
            rows = await pipe.execute()
        letters = []
        for event_id, row in zip(ids, rows, strict=True):
            f = {key.decode(): value for key, value in row.items()}
            letters.append(
                DeadLetter(
                    id=event_id,
                    event=_text(f.get("event")),
                    lane=_text(f.get("lane")),
                    path=_text(f.get("path")),
                    instance=_text(f.get("instance")),
                    received=float(f.get("received") or 0),
                    dead_at=float(f.get("dead_at") or 0),
                    attempts=int(f.get("attempts") or 0),
                    status=_text(f.get("status")),
                    error=_text(f.get("error")),
                    body=f.get("body") or b"",
                )
            )
        return letters

    async def requeue(self, event_id: str, now: float) -> bool:
        """Send a dead letter again: to the end of its lane, with a fresh retry window."""
        k = self.keys
        lane = await self.redis.hget(k.event(event_id), "lane")
        if lane is None:
            return False
        return bool(
            await self._requeue(
                keys=[k.dead, k.event(event_id), k.lanes, k.pending, k.lane(_text(lane))],
                args=[event_id, repr(now), lane, k.wake],
            )
        )

    async def forget(self, event_id: str) -> bool:
        k = self.keys
        return bool(await self._forget(keys=[k.dead, k.event(event_id)], args=[event_id]))
