"""The failed store: the Redis list ``queues:failed`` and, when configured, ``failed_jobs``.

MySQL is written first and Redis second, in one script that also drops the reservation, so
a job leaves ``:reserved`` only once it is recorded; if MySQL is down the job stays reserved
and is tried again when its reservation expires. The row matches Laravel's
``DatabaseUuidFailedJobProvider`` so ``php artisan queue:failed`` lists it.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

import aiomysql
import redis.asyncio as aioredis

from workers.jobs import Job, with_attempts
from workers.queues import QueueKeys, failed_key

# KEYS: failed list, reserved zset. ARGV: entry, reserved string. Only a job still reserved
# by this attempt is recorded: one whose reservation expired is running again elsewhere.
RECORD = """
if redis.call('zrem', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('rpush', KEYS[1], ARGV[1])
return 1
"""

# KEYS: failed list, queue, notify. ARGV: entry, payload. Only the caller that removed
# the entry pushes the job, so two concurrent retries cannot run it twice.
RETRY = """
if redis.call('lrem', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('rpush', KEYS[2], ARGV[2])
redis.call('rpush', KEYS[3], 1)
return 1
"""

INSERT = (
    "INSERT INTO failed_jobs (uuid, connection, queue, payload, exception, failed_at)"
    " VALUES (%s, 'redis', %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE payload = VALUES(payload), exception = VALUES(exception),"
    " failed_at = VALUES(failed_at)"
)


@dataclass(frozen=True, slots=True)
class FailedJob:
    """One entry of ``queues:failed`` (JSON); ``id`` is the job's uuid, as in failed_jobs."""

    id: str
    uuid: str
    connection: str
    queue: str
    payload: str
    exception: str
    failed_at: str

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FailedJob:
        return cls(**json.loads(raw))


class FailedStore:
    def __init__(self, redis: aioredis.Redis, prefix: str, mysql: aiomysql.Pool | None) -> None:
        self.redis = redis
        self.prefix = prefix
        self.key = failed_key(prefix)
        self.mysql = mysql
        self._record = redis.register_script(RECORD)
        self._retry = redis.register_script(RETRY)

    async def record(self, job: Job, exception: str) -> FailedJob:
        """Store the failure, then drop the job's reservation."""
        job_id = job.uuid or str(uuid.uuid4())
        entry = FailedJob(
            id=job_id,
            uuid=job_id,
            connection="redis",
            queue=job.queue,
            payload=job.raw.decode("utf-8", "replace"),
            exception=exception,
            failed_at=datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S"),
        )
        if self.mysql is not None:
            async with self.mysql.acquire() as conn, conn.cursor() as cur:
                await cur.execute(
                    INSERT,
                    (entry.uuid, entry.queue, entry.payload, entry.exception, entry.failed_at),
                )
        reserved = QueueKeys(self.prefix, job.queue).reserved
        if not await self._record(keys=[self.key, reserved], args=[entry.to_json(), job.raw]):
            await self._forget_rows([job_id])  # taken again meanwhile: not failed after all
        return entry

    async def _entries(self) -> list[tuple[bytes, FailedJob]]:
        return [(raw, FailedJob.from_json(raw)) for raw in await self.redis.lrange(self.key, 0, -1)]

    async def all(self) -> list[FailedJob]:
        return [entry for _, entry in await self._entries()]

    async def find(self, job_id: str) -> FailedJob | None:
        return next((e for _, e in await self._entries() if e.id == job_id), None)

    async def count(self) -> int:
        return await self.redis.llen(self.key)

    async def retry(self, job_id: str | None = None) -> list[str]:
        """Push failed jobs (one id, or all) back onto their queue with attempts reset to 0."""
        retried = []
        for raw, entry in await self._entries():
            if job_id is not None and entry.id != job_id:
                continue
            try:
                payload = with_attempts(entry.payload.encode(), 0)
            except ValueError:
                continue  # not a JSON object: retrying would only fail it again
            keys = QueueKeys(self.prefix, entry.queue)
            if await self._retry(keys=[self.key, keys.list, keys.notify], args=[raw, payload]):
                retried.append(entry.id)
        await self._forget_rows(retried)
        return retried

    async def forget(self, job_id: str) -> bool:
        removed = 0
        for raw, entry in await self._entries():
            if entry.id == job_id:
                removed += await self.redis.lrem(self.key, 0, raw)
        await self._forget_rows([job_id] if removed else [])
        return removed > 0

    async def flush(self) -> int:
        """Drop every entry of the Redis list, and those rows (only those) of failed_jobs."""
        entries = await self._entries()
        for raw, _ in entries:
            await self.redis.lrem(self.key, 0, raw)
        await self._forget_rows([e.id for _, e in entries])
        return len(entries)

    async def _forget_rows(self, ids: list[str]) -> None:
        if self.mysql is None or not ids:
            return
        async with self.mysql.acquire() as conn, conn.cursor() as cur:
            await cur.executemany("DELETE FROM failed_jobs WHERE uuid = %s", [(i,) for i in ids])
