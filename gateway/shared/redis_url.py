"""A Redis client for a ``REDIS_URL``: one server, or the primary that Sentinel watches.

``redis+sentinel://[:password@]host:port[,host:port...]/service_name[/db]`` names the
Sentinels and the service; the client asks them for the primary whenever it connects.
redis-py alone can keep talking to a demoted primary until a write fails, so
:class:`SwitchFollower` also listens to Sentinel's ``+switch-master`` and drops the clients'
connections the moment a promotion is announced: their next call goes to the new primary.
The Sentinels' own password, if they have one, is ``?sentinel_password=...``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qs, unquote

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel
from redis.exceptions import RedisError

log = logging.getLogger("gateway.redis")

SCHEME = "redis+sentinel://"
RETRY = 1.0  # seconds between attempts at a Sentinel that cannot be reached


class RedisUrlError(ValueError):
    """A ``redis+sentinel://`` URL that cannot be used; the message is one line."""


class NotReplicated(Exception):
    """Redis kept a write, but fewer replicas than asked (``redis_min_replicas``) confirmed
    it in time (``WAIT``): a failover now could lose it."""

    def __init__(self, acked: int) -> None:
        super().__init__(f"{acked} replicas confirmed it")
        self.acked = acked


def glob_escape(text: str) -> str:
    """``text`` matched literally by SCAN's MATCH."""
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def hash_tag(key: str) -> str | None:
    """The part of ``key`` Redis Cluster hashes when it has one (``{tag}``), as Redis finds
    it: between the first ``{`` and the first ``}`` after it, when not empty."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    if end <= start + 1:
        return None
    return key[start + 1 : end]


# KEYS: a key's name before it was hash-tagged, its name now. Moves the old key to the new
# name; when both exist (a process of the earlier version wrote meanwhile), what the old one
# holds is added to the new one without overwriting: list elements at the end, set and
# sorted-set members and hash fields the new one lacks, the larger of two numbers.
ADOPT = """
local kind = redis.call('type', KEYS[1]).ok
if kind == 'none' then return 0 end
if redis.call('exists', KEYS[2]) == 0 then
  redis.call('rename', KEYS[1], KEYS[2])
  return 1
end
if kind == 'list' then
  for _, item in ipairs(redis.call('lrange', KEYS[1], 0, -1)) do
    redis.call('rpush', KEYS[2], item)
  end
elseif kind == 'zset' then
  local items = redis.call('zrange', KEYS[1], 0, -1, 'withscores')
  for i = 1, #items, 2 do redis.call('zadd', KEYS[2], 'NX', items[i + 1], items[i]) end
elseif kind == 'hash' then
  local items = redis.call('hgetall', KEYS[1])
  for i = 1, #items, 2 do redis.call('hsetnx', KEYS[2], items[i], items[i + 1]) end
elseif kind == 'set' then
  for _, item in ipairs(redis.call('smembers', KEYS[1])) do redis.call('sadd', KEYS[2], item) end
elseif kind == 'string' then
  local old, new = tonumber(redis.call('get', KEYS[1])), tonumber(redis.call('get', KEYS[2]))
  if old and new and old > new then redis.call('set', KEYS[2], old, 'KEEPTTL') end
end
redis.call('del', KEYS[1])
return 1
"""


async def adopt_renamed(redis: aioredis.Redis, renamed: Mapping[str, str]) -> int:
    """Move keys an earlier version kept under other names (``old -> new``) to their new
    ones, so an upgrade keeps their data; how many were moved. Run at start-up.

    The old names were only ever used on one server, never on Redis Cluster (where old and
    new fall in different slots): a name is first looked for, and adopted only when found.
    """
    adopted = 0
    for old, new in renamed.items():
        if await redis.exists(old):
            adopted += await redis.eval(ADOPT, 2, old, new)
    return adopted


@dataclass(frozen=True, slots=True)
class SentinelTarget:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    password: str | None = None
    sentinel_password: str | None = None


def sentinel_target(url: str) -> SentinelTarget | None:
    """The Sentinels and service of a ``redis+sentinel://`` URL; None for a plain one."""
    if not url.startswith(SCHEME):
        return None
    rest, _, query = url[len(SCHEME) :].partition("?")
    netloc, _, path = rest.partition("/")
    auth, _, hosts = netloc.rpartition("@")
    password = unquote(auth.partition(":")[2]) if auth else None
    sentinels = []
    for part in hosts.split(","):
        host, _, port = part.strip().rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisUrlError(f"redis_url: {part.strip()!r} is not a Sentinel host:port")
        sentinels.append((host.strip("[]"), int(port)))
    service, _, db = path.strip("/").partition("/")
    if not service:
        raise RedisUrlError("redis_url: a redis+sentinel:// URL needs /service_name after hosts")
    if db and not db.isdigit():
        raise RedisUrlError(f"redis_url: database {db!r} is not a number")
    options = parse_qs(query)
    return SentinelTarget(
        tuple(sentinels),
        unquote(service),
        int(db or 0),
        password or None,
        (options.get("sentinel_password") or [None])[0],
    )


def redis_client(url: str, **options: Any) -> aioredis.Redis:
    """A client for ``url`` with ``options`` (redis-py's connection settings)."""
    target = sentinel_target(url)
    if target is None:
        return aioredis.Redis.from_url(url, **options)
    return _sentinel(target, options).master_for(
        target.service, db=target.db, password=target.password, **options
    )


async def primary_line(url: str, timeout: float = 2.0) -> str:
    """For ``check-config``: the Redis primary ``url`` leads to, as one line (which Sentinel
    service named it, or that the server named is a replica, or why it is unknown)."""
    target = sentinel_target(url)
    try:
        if target is not None:
            sentinel = _sentinel(target, {"socket_connect_timeout": timeout})
            host, port = await sentinel.discover_master(target.service)
            return f"redis primary: {host}:{port} (Sentinel service {target.service!r})"
        client = aioredis.Redis.from_url(
            url, socket_connect_timeout=timeout, socket_timeout=timeout
        )
        try:
            role = (await client.info("replication")).get("role")
            where = client.connection_pool.connection_kwargs
        finally:
            await client.aclose()
    except (RedisError, OSError) as exc:
        return f"redis primary: unknown, Redis could not be asked ({type(exc).__name__}: {exc})"
    name = where.get("path") or f"{where.get('host')}:{where.get('port')}"
    if role != "master":
        kind = "replica" if role == "slave" else role
        return f"redis primary: {name} is a {kind}, not a primary: writes will fail"
    return f"redis primary: {name}"


def _sentinel(target: SentinelTarget, options: dict[str, Any]) -> Sentinel:
    timeout = options.get("socket_connect_timeout") or 2.0
    sentinel_options: dict[str, Any] = {
        "socket_timeout": timeout,
        "socket_connect_timeout": timeout,
    }
    if target.sentinel_password:
        sentinel_options["password"] = target.sentinel_password
    return Sentinel(list(target.sentinels), sentinel_kwargs=sentinel_options)


class SwitchFollower:
    """Drops ``clients``' connections when Sentinel announces a new primary for the service."""

    def __init__(self, url: str, clients: Sequence[aioredis.Redis]) -> None:
        self.target = sentinel_target(url)
        self.clients = list(clients)
        self.switches = 0
        self.primary: str | None = None  # host:port, as Sentinel last named it
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.target is not None and self._task is None:
            self._task = asyncio.create_task(self._follow(self.target))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _follow(self, target: SentinelTarget) -> None:
        with contextlib.suppress(RedisError, OSError):
            host, port = await _sentinel(target, {}).discover_master(target.service)
            self.primary = f"{host}:{port}"
        while True:
            for host, port in target.sentinels:
                with contextlib.suppress(RedisError, OSError):
                    async for announced in _switches(host, port, target):
                        await self._switched(announced)
            await asyncio.sleep(RETRY)

    async def _switched(self, announced: str) -> None:
        self.switches += 1
        self.primary = announced
        log.warning("Redis primary of %s is now %s", self.target.service, announced)  # type: ignore[union-attr]
        for client in self.clients:
            await client.connection_pool.disconnect()


async def _switches(host: str, port: int, target: SentinelTarget) -> AsyncIterator[str]:
    """Each new primary (``host:port``) one Sentinel announces for the service."""
    sentinel = aioredis.Redis(
        host=host, port=port, password=target.sentinel_password, socket_keepalive=True
    )
    try:
        async with sentinel.pubsub() as pubsub:
            await pubsub.subscribe("+switch-master")
            async for message in pubsub.listen():
                if message.get("type") != "message":
                    continue
                # "<service> <old ip> <old port> <new ip> <new port>"
                words = message["data"].decode("utf-8", "replace").split()
                if len(words) == 5 and words[0] == target.service:
                    yield f"{words[3]}:{words[4]}"
    finally:
        await sentinel.aclose()
