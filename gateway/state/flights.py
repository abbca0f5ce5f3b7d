"""Single flight: one create of a session at a time, across every gateway process.

Two creates of one session racing each other (a Laravel retry after a slow QR start) must
not be placed on two instances: two whatsapp-web.js clients would fight over one account.
While one create of a session is in flight, the others wait for it, in this process on an
asyncio lock and across processes on a short Redis lock, then see its pin. When Redis is
away the in-process lock is all there is.

The Redis lock lives ``LOCK_TTL`` seconds and its holder renews it while it works, so a
process that died mid-create holds it up no longer than that; a waiter never goes ahead
without it: after ``wait`` seconds it gives up (``Busy``), and nothing is created.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from gateway.shared.tasks import cancel_and_wait
from gateway.state.link import RedisLink, Unavailable

# Release the lock only if it is still ours (it may have expired and been taken since).
# KEYS: the lock. ARGV: our token.
RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# Renew the lock if it is still ours. KEYS: the lock. ARGV: our token, ttl (ms).
RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

POLL = 0.02  # seconds between attempts at a lock another process holds
LOCK_TTL = 10.0  # seconds a holder that stopped renewing keeps the lock
RENEW_EVERY = 2.0


class Busy(Exception):
    """Another process's create of the session outlasted the wait: nothing was created."""


class Flights:
    def __init__(self, link: RedisLink, wait: float, lock_ttl: float = LOCK_TTL) -> None:
        self.link, self.wait, self.lock_ttl = link, wait, lock_ttl
        self._release = link.redis.register_script(RELEASE)
        self._renew = link.redis.register_script(RENEW)
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
                renewing = asyncio.create_task(self._keep(session_id, token)) if token else None
                try:
                    yield
                finally:
                    await cancel_and_wait([renewing])
                    if token is not None:
                        await self._drop(session_id, token)
        finally:
            self._users[session_id] -= 1
            if not self._users[session_id]:
                del self._users[session_id], self._local[session_id]

    async def _acquire(self, session_id: str) -> str | None:
        """The Redis lock's token; None when Redis is away. Raises ``Busy`` when another
        process holds it for longer than the wait."""
        key, token = self.link.keys.creating(session_id), uuid.uuid4().hex
        ttl_ms = int(self.lock_ttl * 1000)
        deadline = time.monotonic() + self.wait
        while True:
            try:
                taken = await self.link.run(
                    lambda: self.link.redis.set(key, token, nx=True, px=ttl_ms)
                )
            except Unavailable:
                return None
            if taken:
                return token
            if time.monotonic() >= deadline:
                raise Busy
            await asyncio.sleep(POLL)

    async def _keep(self, session_id: str, token: str) -> None:
        """Renew the lock while the create works (a lost renewal only waits for the next)."""
        keys, args = [self.link.keys.creating(session_id)], [token, int(self.lock_ttl * 1000)]
        while True:
            await asyncio.sleep(min(RENEW_EVERY, self.lock_ttl / 3))
            with contextlib.suppress(Unavailable):
                await self.link.run(lambda: self._renew(keys=keys, args=args))

    async def _drop(self, session_id: str, token: str) -> None:
        keys = [self.link.keys.creating(session_id)]
        with contextlib.suppress(Unavailable):
            await self.link.run(lambda: self._release(keys=keys, args=[token]))
