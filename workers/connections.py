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


__all__ = ["mysql_pool", "redis_client"]
