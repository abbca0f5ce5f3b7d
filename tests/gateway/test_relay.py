"""The test relay: traffic goes through, reset() fails connections at once until restore()."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError

from tests.relay import Relay


async def test_reset_fails_live_and_new_connections_until_restored() -> None:
    async with Relay("127.0.0.1", 6379) as relay:
        client = aioredis.Redis(port=relay.port, socket_connect_timeout=2)
        try:
            assert await client.ping()
            relay.reset()
            for _ in range(2):  # the live connection, then a new one
                with pytest.raises(RedisConnectionError):
                    await client.ping()
            relay.restore()
            assert await client.ping()
            assert relay.sent > 0 and relay.received > 0
        finally:
            await client.aclose()
