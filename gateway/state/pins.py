"""Where pins and active counts are stored: Redis, mirrored in every process's memory.

Redis holds the truth shared by all gateway processes and kept across restarts; memory
answers every look-up of a known session without a round trip. Each change is published on
one channel, so the other processes' memories follow within milliseconds. When Redis does
not answer, the store keeps working from memory, remembers what it changed, and writes it
back when Redis returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.metrics import Metrics
from gateway.router.placement import least_loaded
from gateway.tasks import cancel_and_wait

log = logging.getLogger("gateway.pins")
T = TypeVar("T")

# Reserve a place on the least-loaded eligible instance. Load = confirmed active sessions +
# placements still in flight (a sorted set of tokens scored by expiry, so a crashed process
# cannot leak them). Mirrors router.placement.least_loaded; atomic across processes.
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


class Unavailable(Exception):
    """Redis did not answer in time; the caller goes on from memory."""


@dataclass(frozen=True)
class Placement:
    url: str
    token: str
    in_redis: bool


class Keys:
    """Every Redis key the gateway owns, under ``<REDIS_PREFIX>wa-gateway:``."""

    def __init__(self, prefix: str) -> None:
        self.sessions = f"{prefix}sessions"
        self.workspaces = f"{prefix}workspaces"
        self.active = f"{prefix}active"
        self.draining = f"{prefix}draining"
        self.events = f"{prefix}events"
        self._placing = f"{prefix}placing:"

    def placing(self, url: str) -> str:
        return self._placing + url


class PinStore:
    """Session and workspace pins, active counts and draining marks of all processes."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        timeout: float,
        reservation_ttl: float,
        metrics: Metrics,
    ) -> None:
        self.keys = Keys(prefix)
        self.timeout = timeout
        self.reservation_ttl = reservation_ttl
        self.metrics = metrics
        self.redis = aioredis.Redis.from_url(
            redis_url, socket_timeout=timeout, socket_connect_timeout=timeout
        )
        # The subscriber waits for messages indefinitely, so it has no socket timeout.
        self._subscriber = aioredis.Redis.from_url(redis_url, socket_connect_timeout=timeout)
        self.sessions: dict[str, str] = {}
        self.workspaces: dict[str, str] = {}
        self.active: dict[str, int] = {}
        self.draining: set[str] = set()
        self.available = False
        self._origin = uuid.uuid4().hex
        self._backlog: dict[tuple[str, str], str | None] = {}
        self._last_warning = 0.0
        self._place = self.redis.register_script(PLACE)
        self._confirm = self.redis.register_script(CONFIRM)
        self._release = self.redis.register_script(RELEASE)
        self._tasks: list[asyncio.Task[None]] = []
        self._back = asyncio.Event()
        self._gone = asyncio.Event()

    # --- lifetime -----------------------------------------------------------------------

    async def start(self) -> None:
        """Load every pin into memory and follow the other processes' changes."""
        try:
            await self._reconnected()
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_away(exc)
        self._tasks = [asyncio.create_task(self._follow()), asyncio.create_task(self._watch())]

    async def close(self) -> None:
        await cancel_and_wait(self._tasks)
        await self.redis.aclose()
        await self._subscriber.aclose()

    # --- reads --------------------------------------------------------------------------

    async def session(self, session_id: str) -> str | None:
        """The instance pinned for a session: memory first, Redis on a miss."""
        return await self._lookup(self.sessions, self.keys.sessions, session_id)

    async def workspace(self, workspace_id: str) -> str | None:
        """The instance of the workspace's most recent session."""
        return await self._lookup(self.workspaces, self.keys.workspaces, workspace_id)

    async def _lookup(self, cache: dict[str, str], key: str, field: str) -> str | None:
        url = cache.get(field)
        if url is not None:
            self.metrics.pin_cache.labels("hit").inc()
            return url
        self.metrics.pin_cache.labels("miss").inc()
        with contextlib.suppress(Unavailable):
            raw = await self._run(lambda: self.redis.hget(key, field))
            if raw is not None:
                url = cache[field] = raw.decode()
        return url

    # --- writes -------------------------------------------------------------------------

    async def pin_session(self, session_id: str, url: str, workspace_id: str | None = None) -> None:
        """Pin a session (and its workspace, whose newest session it now is) to ``url``."""
        changes = [("session", session_id, url)]
        if workspace_id is not None:
            changes.append(("workspace", workspace_id, url))
        await self._write(changes)

    async def pin_workspace(self, workspace_id: str, url: str) -> None:
        await self._write([("workspace", workspace_id, url)])

    async def unpin_session(self, session_id: str) -> None:
        await self._write([("session", session_id, None)])

    async def set_draining(self, url: str, draining: bool) -> None:
        await self._write([("draining", url, "1" if draining else None)])

    async def _write(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        for kind, ident, value in changes:
            self._apply(kind, ident, value)
        try:
            await self._run(lambda: self._persist(changes))
        except Unavailable:
            for kind, ident, value in changes:
                self._backlog[(kind, ident)] = value

    async def _persist(self, changes: Sequence[tuple[str, str, str | None]]) -> None:
        pipe = self.redis.pipeline(transaction=False)
        for kind, ident, value in changes:
            if kind == "draining":
                (pipe.sadd if value else pipe.srem)(self.keys.draining, ident)
            else:
                key = self.keys.sessions if kind == "session" else self.keys.workspaces
                if value is None:
                    pipe.hdel(key, ident)
                else:
                    pipe.hset(key, ident, value)
            event = {"origin": self._origin, "kind": kind, "id": ident, "url": value}
            pipe.publish(self.keys.events, json.dumps(event))
        await pipe.execute()

    def _apply(self, kind: str, ident: str, value: str | None) -> None:
        if kind == "draining":
            (self.draining.add if value else self.draining.discard)(ident)
            return
        cache = self.sessions if kind == "session" else self.workspaces
        if value is None:
            cache.pop(ident, None)
        else:
            cache[ident] = value

    # --- counts and placement -----------------------------------------------------------

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
            raw = await self._run(lambda: self._place(keys=keys, args=args))
        except Unavailable:
            url = least_loaded(eligible, self.active, limit, preferred)
            if url is None:
                return None
            self.active[url] = self.active.get(url, 0) + 1
            return Placement(url, token, in_redis=False)
        return Placement(raw.decode(), token, in_redis=True) if raw else None

    async def confirm(self, placement: Placement) -> None:
        if not placement.in_redis:
            return
        keys = [self.keys.active, self.keys.placing(placement.url)]
        with contextlib.suppress(Unavailable):
            args = [placement.url, placement.token]
            count = await self._run(lambda: self._confirm(keys=keys, args=args))
            self.active[placement.url] = int(count)
            return
        self.active[placement.url] = self.active.get(placement.url, 0) + 1

    async def abandon(self, placement: Placement) -> None:
        if not placement.in_redis:
            self.active[placement.url] = max(0, self.active.get(placement.url, 0) - 1)
            return
        with contextlib.suppress(Unavailable):
            await self._run(
                lambda: self.redis.zrem(self.keys.placing(placement.url), placement.token)
            )

    async def session_ended(self, url: str) -> None:
        """One fewer active session on ``url`` (the instance confirmed a delete)."""
        self.active[url] = max(0, self.active.get(url, 0) - 1)
        with contextlib.suppress(Unavailable):
            count = await self._run(lambda: self._release(keys=[self.keys.active], args=[url]))
            self.active[url] = int(count)

    async def set_active(self, url: str, count: int) -> None:
        """Correct a count from the instance's own report."""
        self.active[url] = count
        with contextlib.suppress(Unavailable):
            await self._run(lambda: self.redis.hset(self.keys.active, url, count))

    # --- Redis availability -------------------------------------------------------------

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call, bounded by ``redis_timeout``; fails at once while Redis is away."""
        if not self.available:
            raise Unavailable
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except (RedisError, OSError, TimeoutError) as exc:
            self._went_away(exc)
            raise Unavailable from exc

    def _went_away(self, exc: BaseException) -> None:
        if self.available or not self._last_warning:
            self.metrics.redis_up.set(0)
        self.available = False
        self._back.clear()
        self._gone.set()
        now = time.monotonic()
        if now - self._last_warning >= 60:
            self._last_warning = now
            log.warning("Redis unavailable (%s); routing from memory", type(exc).__name__)

    async def _reconnected(self) -> None:
        """Reload what the others changed, then write back what changed here meanwhile."""
        self.available = True  # let the calls below run; a failure marks Redis away again
        backlog, self._backlog = self._backlog, {}
        try:
            pipe = self.redis.pipeline(transaction=False)
            pipe.hgetall(self.keys.sessions)
            pipe.hgetall(self.keys.workspaces)
            pipe.hgetall(self.keys.active)
            pipe.smembers(self.keys.draining)
            sessions, workspaces, active, draining = await pipe.execute()
            if not sessions and self.sessions:
                # Redis came back empty (restarted without persistence): memory is the truth.
                memory = {("session", k): v for k, v in self.sessions.items()}
                memory |= {("workspace", k): v for k, v in self.workspaces.items()}
                backlog = memory | backlog
            else:
                self.sessions = {k.decode(): v.decode() for k, v in sessions.items()}
                self.workspaces = {k.decode(): v.decode() for k, v in workspaces.items()}
                self.draining = {m.decode() for m in draining}
                for (kind, ident), value in backlog.items():
                    self._apply(kind, ident, value)
            await self._persist([(kind, ident, v) for (kind, ident), v in backlog.items()])
        except BaseException:
            self._backlog = backlog | self._backlog
            raise
        self.active.update({k.decode(): int(v) for k, v in active.items()})
        self.metrics.redis_up.set(1)
        self._gone.clear()
        self._back.set()
        if self._last_warning:
            log.warning("Redis is back; pins written and reloaded")

    async def _watch(self) -> None:
        """While Redis is away, ask every half second whether it is back."""
        while True:
            await self._gone.wait()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.redis.ping()
                await self._reconnected()
            except (RedisError, OSError, TimeoutError) as exc:
                self._went_away(exc)
                await asyncio.sleep(0.5)

    async def _follow(self) -> None:
        """Apply the other processes' changes as they are published."""
        while True:
            await self._back.wait()
            pubsub = self._subscriber.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.keys.events)
                # Changes made between the reload and this subscription would be missed.
                await self._reconnected()
                async for message in pubsub.listen():
                    self._on_event(message.get("data"))
            except (RedisError, OSError) as exc:
                self._went_away(exc)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    def _on_event(self, data: Any) -> None:
        try:
            event = json.loads(data)
        except (TypeError, ValueError):
            return
        if event.get("origin") == self._origin:
            return
        self._apply(event["kind"], event["id"], event["url"])
