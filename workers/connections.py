"""Redis and MySQL clients built from the shared settings."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis

from gateway.shared.failures import mysql_pool
from gateway.shared.redis_url import redis_client as sentinel_client
from gateway.shared.redis_url import sentinel_target


def redis_client(url: str, *, max_connections: int = 50) -> aioredis.Redis:
    """A bytes client: payloads must round-trip byte for byte to be found in ``:reserved``.

    No socket timeout, because the pool blocks in BLPOP; the health check keeps idle
    connections honest instead. A blocking pool makes a burst wait for a connection
    rather than fail with "too many connections".
    """
    options: dict[str, Any] = {
        "decode_responses": False,
        "max_connections": max_connections,
        "health_check_interval": 30,
        "socket_connect_timeout": 5,
        "socket_keepalive": True,  # a peer gone without a reset is noticed, not waited on
    }
    if sentinel_target(url) is not None:  # Sentinel's pool finds the primary; it cannot block
        return sentinel_client(url, **options)
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=None, **options)
    return aioredis.Redis(connection_pool=pool)


class Replicated:
    """One connection of ``redis``'s pool for the writes that count only once ``replicas``
    replicas have them (``redis_min_replicas``).

    ``WAIT`` covers the writes made on its own connection, so those writes and the WAIT share
    this one. A reconnect between them (to another server, after a failover) leaves the WAIT
    proving nothing about them: :attr:`connects` counts connections made, so a caller notes it
    before writing and :meth:`acked` tells such a WAIT apart.
    """

    def __init__(self, redis: aioredis.Redis, replicas: int, wait: float) -> None:
        self.client = aioredis.Redis(
            connection_pool=redis.connection_pool, single_connection_client=True
        )
        self.replicas, self.wait = replicas, wait
        self.connects = 0

    async def start(self) -> None:
        await self.client.initialize()
        assert self.client.connection is not None
        self.client.connection.register_connect_callback(self._connected)

    def _connected(self, _connection: object) -> None:
        self.connects += 1

    async def acked(self, since: int) -> int | None:
        """How many replicas have every write made here since ``connects`` was ``since``;
        None when the connection was made again meanwhile (they may be lost)."""
        acked = await self.client.execute_command("WAIT", self.replicas, int(self.wait * 1000))
        return None if self.connects != since else int(acked)

    async def close(self) -> None:
        await self.client.aclose()


__all__ = ["Replicated", "mysql_pool", "redis_client"]
