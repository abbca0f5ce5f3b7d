"""Single flight: one create of a session at a time, across every gateway process.

Two creates of one session racing each other (a Laravel retry after a slow QR start) must
not be placed on two instances: two whatsapp-web.js clients would fight over one account.
While one create of a session is in flight, the others wait for it, in this process on an
asyncio lock and across processes on a short Redis lock, then see its pin. When Redis is
away the in-process lock is all there is.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from gateway.state.link import RedisLink, Unavailable

# Release the lock only if it is still ours (it may have expired and been taken since).
# KEYS: the lock. ARGV: our token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

POLL = 0.02  # seconds between attempts at a lock another process holds


class Flights:
    def __init__(self, link: RedisLink, ttl: float) -> None:
        self.link, self.ttl = link, ttl
        self._release = link.redis.register_script(RELEASE)
        self._local: dict[str, asyncio.Lock] = {}
        self._users: dict[str, int] = {}

    @contextlib.asynccontextmanager
    async def only_one(self, session_id: str) -> AsyncIterator[None]:
        """Hold the session's create lock for the body of the ``async with``."""
        lock = self._local.setdefault(session_id, asyncio.Lock())
        self._users[session_id] = self._users.get(session_id, 0) + 1
        try:
            async with lock:
                token = await self._acquire(session_id)
                try:
                    yield
                finally:
                    if token is not None:
                        await self._drop(session_id, token)
        finally:
            self._users[session_id] -= 1
            if not self._users[session_id]:
                del self._users[session_id], self._local[session_id]

    async def _acquire(self, session_id: str) -> str | None:
        """The Redis lock's token; None when Redis is away (or the wait outlived the lock)."""
        key, token = self.link.keys.creating(session_id), uuid.uuid4().hex
        deadline = time.monotonic() + self.ttl
        while time.monotonic() < deadline:
            try:
                taken = await self.link.run(
                    lambda: self.link.redis.set(key, token, nx=True, px=int(self.ttl * 1000))
                )
            except Unavailable:
                return None
            if taken:
                return token
            await asyncio.sleep(POLL)
        return None

    async def _drop(self, session_id: str, token: str) -> None:
        keys = [self.link.keys.creating(session_id)]
        with contextlib.suppress(Unavailable):
            await self.link.run(lambda: self._release(keys=keys, args=[token]))
