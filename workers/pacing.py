"""Per-session send pacing across every process and host, kept in Redis.

A send takes the session's slot with ``SET key NX PX interval``; while the key lives, other
sends of that session (in that queue) learn how long is left from its PTTL. Expiry is
Redis' own clock, so hosts with skewed clocks still agree.
"""

from __future__ import annotations

from collections.abc import Mapping

import redis.asyncio as aioredis

# KEYS: the session's pace key. ARGV: interval in ms. Returns 0 (go) or ms left to wait.
ACQUIRE = """
if redis.call('set', KEYS[1], 1, 'NX', 'PX', ARGV[1]) then return 0 end
local left = redis.call('pttl', KEYS[1])
if left < 0 then return tonumber(ARGV[1]) end
return left
"""


class Pacer:
    def __init__(
        self, redis: aioredis.Redis, key_prefix: str, intervals: Mapping[str, float]
    ) -> None:
        self.key_prefix = f"{key_prefix}workers:pace:"
        self.intervals = {queue: float(s) for queue, s in intervals.items() if float(s) > 0}
        self._acquire = redis.register_script(ACQUIRE)

    def applies(self, queue: str, session_id: object) -> bool:
        return queue in self.intervals and isinstance(session_id, str | int) and session_id != ""

    async def acquire(self, queue: str, session_id: str | int) -> float:
        """Seconds to wait before this session may send again on ``queue``; 0 means go now."""
        interval_ms = max(1, round(self.intervals[queue] * 1000))
        key = f"{self.key_prefix}{queue}:{session_id}"
        left_ms = await self._acquire(keys=[key], args=[interval_ms])
        return int(left_ms) / 1000
