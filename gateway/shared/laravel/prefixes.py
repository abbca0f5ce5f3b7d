"""Where Laravel's queue keys are: a ``redis_prefix`` that differs from the app's drains keys
nobody writes to, silently, so ``check-config`` and the workers' start-up look and say so."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.shared.redis_url import redis_client

SCAN_BUDGET = 200  # SCAN calls of 1,000 keys each: a look at start-up, not a crawl


async def queue_prefixes(redis: aioredis.Redis) -> Counter[str]:
    """Prefixes holding Laravel queue keys (``<prefix>queues:...``), with their key counts."""
    found: Counter[str] = Counter()
    cursor, calls = 0, 0
    while True:
        cursor, keys = await redis.scan(cursor, match="*queues:*", count=1000)
        for key in keys:
            text = key.decode("utf-8", "replace") if isinstance(key, bytes) else key
            found[text.split("queues:", 1)[0]] += 1
        calls += 1
        if cursor == 0 or calls >= SCAN_BUDGET:
            return found


async def prefix_warning(
    redis: aioredis.Redis, prefix: str, queues: Sequence[str] = ()
) -> str | None:
    """One line when ``prefix`` holds no Laravel queue keys but another prefix does."""
    known = [f"{prefix}queues:failed"] + [
        f"{prefix}queues:{q}{part}" for q in queues for part in ("", ":delayed", ":reserved")
    ]
    if await redis.exists(*known):
        return None
    found = await queue_prefixes(redis)
    if not found or prefix in found:
        return None
    others = ", ".join(f"{p!r} ({n} keys)" for p, n in found.most_common(3))
    return (
        f"no Laravel queue keys under redis_prefix {prefix!r}, but some under {others}:"
        " check REDIS_PREFIX, APP_NAME and redis_prefix_form"
    )


async def check_prefix(url: str, prefix: str, queues: Sequence[str] = ()) -> str | None:
    """For ``check-config``: :func:`prefix_warning` on a short-lived client, or one line
    saying Redis could not be asked."""
    client = redis_client(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return await prefix_warning(client, prefix, queues)
    except (RedisError, OSError) as exc:
        return f"could not look for Laravel queue keys in Redis ({type(exc).__name__})"
    finally:
        await client.aclose()
