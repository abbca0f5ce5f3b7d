"""Jobs finished per queue and minute, kept in Redis: every worker process adds its counts,
so the gateway's console shows the pool's throughput, not one process's.

One hash per minute (``<key_prefix>workers:throughput:<minute>``, fields ``queue outcome``),
kept a little over an hour. A process adds what it counted every few seconds in one round
trip, never per job; counts it could not write are added again to the next round.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

import redis.asyncio as aioredis

MINUTE = 60
KEEP = 3900  # seconds a minute's counts are kept
OUTCOMES = ("done", "failed", "retried")


def tally_key(key_prefix: str, minute: int) -> str:
    return f"{key_prefix}workers:throughput:{minute}"


class Tally:
    """One process's counts since its last write."""

    def __init__(self, key_prefix: str) -> None:
        self.key_prefix = key_prefix
        self._counts: Counter[tuple[str, str]] = Counter()

    def note(self, queue: str, outcome: str) -> None:
        self._counts[(queue, outcome)] += 1

    async def flush(self, redis: aioredis.Redis, now: float) -> None:
        """Add the counts to this minute's hash; on an error they wait for the next try."""
        if not self._counts:
            return
        counts, self._counts = self._counts, Counter()
        key = tally_key(self.key_prefix, int(now // MINUTE))
        try:
            async with redis.pipeline(transaction=False) as pipe:
                for (queue, outcome), n in counts.items():
                    pipe.hincrby(key, f"{queue} {outcome}", n)
                await pipe.expire(key, KEEP).execute()
        except BaseException:
            self._counts.update(counts)
            raise


async def throughput(
    redis: aioredis.Redis, key_prefix: str, queues: Iterable[str], now: float, minutes: int = 5
) -> dict[str, dict[str, int]]:
    """Per queue, the jobs done, failed and retried in the last ``minutes`` minutes (the
    current one included)."""
    last = int(now // MINUTE)
    async with redis.pipeline(transaction=False) as pipe:
        for minute in range(last - minutes + 1, last + 1):
            pipe.hgetall(tally_key(key_prefix, minute))
        hashes = await pipe.execute()
    totals = {q: dict.fromkeys(OUTCOMES, 0) for q in queues}
    for counts in hashes:
        for field, n in counts.items():
            name = field.decode() if isinstance(field, bytes) else field
            queue, _, outcome = name.rpartition(" ")
            if queue in totals and outcome in OUTCOMES:
                totals[queue][outcome] += int(n)
    return totals
