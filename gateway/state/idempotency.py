"""Idempotency keys in Redis: held while the first request is in flight, then its answer.

Every gateway process and host shares them, so a repeat is caught wherever it lands. A key
is taken in one script (no two requests both see it free), and only the request that took it
(its token) settles it: a late answer cannot overwrite another attempt's.
"""

from __future__ import annotations

import base64
import uuid
from dataclasses import dataclass

import orjson

from gateway.decisions.idempotency import Held, State
from gateway.http.answers import Relayed
from gateway.http.headers import INSTANCE_HEADER
from gateway.shared.redis_url import NotReplicated
from gateway.state.link import RedisLink

# Take the key, or say how it is held. KEYS: the key. ARGV: fingerprint, token, ttl (ms).
# Returns nil when taken, else {state, fingerprint, answer}.
BEGIN = """
local held = redis.call('HMGET', KEYS[1], 'state', 'fp', 'answer')
if held[1] then return held end
redis.call('HSET', KEYS[1], 'state', 'flight', 'fp', ARGV[1], 'token', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return false
"""

# Settle a key we hold. KEYS: the key. ARGV: token, state, answer, ttl (ms).
SETTLE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'answer', ARGV[3])
redis.call('HDEL', KEYS[1], 'token')
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return 1
"""

# Free a key we hold. KEYS: the key. ARGV: token.
FREE = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('DEL', KEYS[1])
"""


@dataclass(frozen=True, slots=True)
class Kept:
    """An instance's answer as kept for a key; ``body`` is None when it was too large."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes | None
    size: int
    instance: str

    def encode(self) -> bytes:
        return orjson.dumps(
            {
                "status": self.status,
                "headers": [[n.decode("latin-1"), v.decode("latin-1")] for n, v in self.headers],
                "body": None if self.body is None else base64.b64encode(self.body).decode(),
                "size": self.size,
                "instance": self.instance,
            }
        )

    @classmethod
    def decode(cls, raw: bytes) -> Kept:
        kept = orjson.loads(raw)
        body = kept["body"]
        return cls(
            status=int(kept["status"]),
            headers=[(n.encode("latin-1"), v.encode("latin-1")) for n, v in kept["headers"]],
            body=None if body is None else base64.b64decode(body),
            size=int(kept["size"]),
            instance=str(kept["instance"]),
        )


@dataclass(frozen=True, slots=True)
class Begun:
    """The outcome of taking a key: ours (``token``), or held as ``held`` says."""

    token: str | None
    held: Held | None = None
    kept: Kept | None = None


class IdempotencyStore:
    def __init__(self, link: RedisLink, ttl: float, max_body: int, replicas: int = 0) -> None:
        self.link, self.max_body, self.replicas = link, max_body, replicas
        self.ttl_ms = max(1, int(ttl * 1000))
        redis = link.redis
        self._begin = redis.register_script(BEGIN)
        self._settle = redis.register_script(SETTLE)
        self._free = redis.register_script(FREE)

    async def begin(self, scope: str, fingerprint: str) -> Begun:
        """Take the key for a first request, or say how it is held (raises ``Unavailable``)."""
        token = uuid.uuid4().hex
        keys = [self.link.keys.idempotency(scope)]
        args = [fingerprint, token, self.ttl_ms]
        if self.replicas:
            held, acked = await self.link.run(lambda: self._begin_replicated(keys, args))
            if held is None and acked < self.replicas:  # a failover could forget it
                await self.free(scope, token)
                raise NotReplicated(acked)
        else:
            held = await self.link.run(lambda: self._begin(keys=keys, args=args))
        if held is None:
            return Begun(token)
        state, fp, answer = held
        kept = Kept.decode(answer) if answer else None
        return Begun(None, Held(_text(state), _text(fp)), kept)

    async def _begin_replicated(self, keys: list[str], args: list[object]) -> tuple[object, int]:
        """The take, then ``WAIT`` on the same connection (half the Redis timeout)."""
        async with self.link.redis.pipeline(transaction=False) as pipe:
            await self._begin(keys=keys, args=args, client=pipe)
            pipe.execute_command("WAIT", self.replicas, max(1, int(self.link.timeout * 500)))
            held, acked = await pipe.execute()
        return held, int(acked)

    async def keep(self, scope: str, token: str, answer: Relayed) -> None:
        """Keep an instance's answer for every repeat of the key."""
        headers = [(n, v) for n, v in answer.kept if n.lower() != b"date"]
        body = answer.body if len(answer.body) <= self.max_body else None
        instance = answer.headers.get(INSTANCE_HEADER, "")
        kept = Kept(answer.status, headers, body, len(answer.body), instance)
        await self._store(scope, token, State.DONE, kept.encode())

    async def unknown(self, scope: str, token: str) -> None:
        """The first request may have been acted on, and nobody knows: repeats are refused."""
        await self._store(scope, token, State.UNKNOWN, b"")

    async def free(self, scope: str, token: str) -> None:
        """Nothing was done: a later request with the key may go."""
        keys = [self.link.keys.idempotency(scope)]
        await self.link.run(lambda: self._free(keys=keys, args=[token]))

    async def _store(self, scope: str, token: str, state: State, answer: bytes) -> None:
        keys = [self.link.keys.idempotency(scope)]
        args = [token, state.value, answer, self.ttl_ms]
        await self.link.run(lambda: self._settle(keys=keys, args=args))


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else value or ""
