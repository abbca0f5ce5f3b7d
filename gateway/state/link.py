"""The state layer's Redis: bounded calls, a watchdog while it is away, and the backlog.

Every call is bounded by ``redis_timeout``; while Redis is away calls fail at once with
``Unavailable`` and the callers go on from memory. Writes made meanwhile are kept in a
backlog and written back when Redis returns, after the pin map and the counts have reloaded
what the other processes changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from redis.exceptions import RedisError

from gateway.metrics import GatewayMetrics
from gateway.shared.redis_url import redis_client
from gateway.shared.tasks import cancel_and_wait
from gateway.state.keys import Keys

log = logging.getLogger("gateway.pins")
T = TypeVar("T")

REDIS_ERRORS = (RedisError, OSError, TimeoutError)

# One stored change: (kind, id, value); kind is "session", "workspace" or "draining", and a
# None value removes the entry.
Change = tuple[str, str, str | None]
# Writes still owed to Redis, the latest value per (kind, id).
Backlog = dict[tuple[str, str], str | None]
# Called when Redis is back: reload what the others changed and return what to write.
Reload = Callable[[Backlog], Awaitable[Backlog]]


class Unavailable(Exception):
    """Redis did not answer in time; the caller goes on from memory."""


class RedisLink:
    """One Redis for the pin map and the counts, and whether it answers."""

    def __init__(self, redis_url: str, keys: Keys, timeout: float, metrics: GatewayMetrics) -> None:
        self.keys = keys
        self.timeout = timeout
        self.metrics = metrics
        self.redis = redis_client(redis_url, socket_timeout=timeout, socket_connect_timeout=timeout)
        # The subscriber waits for messages indefinitely, so it has no socket timeout; the pin
        # map pings it when it is silent, and TCP keepalive closes a connection long dead.
        self.subscriber = redis_client(
            redis_url, socket_connect_timeout=timeout, socket_keepalive=True
        )
        self.origin = uuid.uuid4().hex  # marks this process's published changes
        self.available = False
        self.back = asyncio.Event()
        self._gone = asyncio.Event()
        self._backlog: Backlog = {}
        self._reloads: list[Reload] = []
        self._last_warning = 0.0
        self._task: asyncio.Task[None] | None = None

    def on_back(self, reload: Reload) -> None:
        """Run ``reload`` (in registration order) each time Redis answers again."""
        self._reloads.append(reload)

    async def start(self) -> None:
        try:
            await self.reconnected()
        except REDIS_ERRORS as exc:
            self.went_away(exc)
        self._task = asyncio.create_task(self._watch())

    async def close(self) -> None:
        await cancel_and_wait([self._task])
        await self.redis.aclose()
        await self.subscriber.aclose()

    async def run(self, call: Callable[[], Awaitable[T]]) -> T:
        """One Redis call, bounded by ``redis_timeout``; fails at once while Redis is away."""
        if not self.available:
            raise Unavailable
        try:
            async with asyncio.timeout(self.timeout):
                return await call()
        except REDIS_ERRORS as exc:
            self.went_away(exc)
            raise Unavailable from exc

    async def write(self, changes: Sequence[Change]) -> None:
        """Store and publish changes; kept in the backlog while Redis is away."""
        try:
            await self.run(lambda: self._persist(changes))
        except Unavailable:
            for kind, ident, value in changes:
                self._backlog[(kind, ident)] = value

    async def _persist(self, changes: Sequence[Change]) -> None:
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
            event = {"origin": self.origin, "kind": kind, "id": ident, "url": value}
            pipe.publish(self.keys.events, json.dumps(event))
        await pipe.execute()

    def went_away(self, exc: BaseException) -> None:
        if self.available or not self._last_warning:
            self.metrics.redis_up.set(0)
        self.available = False
        self.back.clear()
        self._gone.set()
        now = time.monotonic()
        if now - self._last_warning >= 60:
            self._last_warning = now
            log.warning("Redis unavailable (%s); routing from memory", type(exc).__name__)

    async def reconnected(self) -> None:
        """Reload what the others changed, then write back what changed here meanwhile."""
        self.available = True  # let the calls below run; a failure marks Redis away again
        backlog, self._backlog = self._backlog, {}
        try:
            for reload in self._reloads:
                backlog = await reload(backlog)
            await self._persist([(kind, ident, v) for (kind, ident), v in backlog.items()])
        except BaseException:
            self._backlog = backlog | self._backlog
            raise
        self.metrics.redis_up.set(1)
        self._gone.clear()
        self.back.set()
        if self._last_warning:
            log.warning("Redis is back; pins written and reloaded")

    async def _watch(self) -> None:
        """While Redis is away, ask every half second whether it is back."""
        while True:
            await self._gone.wait()
            try:
                async with asyncio.timeout(self.timeout):
                    await self.redis.ping()
                await self.reconnected()
            except REDIS_ERRORS as exc:
                self.went_away(exc)
                await asyncio.sleep(0.5)
