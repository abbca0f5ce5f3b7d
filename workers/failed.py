"""The failed store: Laravel's ``failed_jobs`` table when MySQL is configured, else a Redis list.

There is one store, so ``php artisan queue:failed | retry | forget`` and ``workers failed ...``
see and change the same entries, whoever failed the job. A row is what Laravel's
``DatabaseUuidFailedJobProvider::log`` writes: the payload as it was popped (``Job.body``,
not the copy the pop re-encoded), the exception text, ``failed_at`` in the app's timezone and
``connection`` = ``laravel_connection``. Without MySQL the same entries go to the Redis list
``queues:failed``.

A failure is recorded before the job's reservation is dropped, so a job leaves ``:reserved``
only once it is on record. When MySQL does not answer, the entry goes to the Redis list
``queues:failed-pending`` in the same step that drops the reservation, and the pool goes on;
its flusher (:meth:`TableFailedStore.write_pending`) moves the entry into ``failed_jobs`` as
soon as MySQL answers, row written before entry removed, by uuid, so a crash in between
writes the same row again. Meanwhile the entry is listed, counted, retried and forgotten as
any other (``waiting``). If Redis is down too, the pool keeps the failure in memory, the job
still reserved, and records it when Redis answers. A retry takes the entry out of the
store and pushes the job in one step (a Lua script, or a MySQL transaction holding the row),
so two retries of one entry cannot run the job twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiomysql
import redis.asyncio as aioredis

from workers.jobs import Job, with_attempts
from workers.queues import QueueKeys, Queues, failed_key, pending_key

# KEYS: failed (or pending) list, reserved zset. ARGV: entry, reserved string. Only a job
# still reserved by this attempt is recorded: one whose reservation expired runs again elsewhere.
RECORD = """
if redis.call('zrem', KEYS[2], ARGV[2]) == 0 then return 0 end
redis.call('rpush', KEYS[1], ARGV[1])
return 1
"""

# KEYS: failed (or pending) list, queue, notify. ARGV: entry, payload. Only the caller that
# removed the entry pushes the job, so two concurrent retries cannot run it twice.
RETRY = """
if redis.call('lrem', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('rpush', KEYS[2], ARGV[2])
redis.call('rpush', KEYS[3], 1)
return 1
"""

COLUMNS = "uuid, connection, queue, payload, exception, failed_at"
INSERT = (
    f"INSERT INTO failed_jobs ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s)"
    " ON DUPLICATE KEY UPDATE connection = VALUES(connection), queue = VALUES(queue),"
    " payload = VALUES(payload), exception = VALUES(exception), failed_at = VALUES(failed_at)"
)

# MySQL not answering a failure's write: the failure waits in Redis instead.
MYSQL_ERRORS = (aiomysql.OperationalError, aiomysql.InterfaceError, OSError)
# How long a failure's write may take: a partitioned MySQL hangs rather than fails.
MYSQL_WAIT = 3.0
PENDING_BATCH = 100  # entries the flusher reads per round trip


@dataclass(frozen=True, slots=True)
class FailedJob:
    """One failed job; ``id`` is the job's uuid, as ``queue:failed`` shows it."""

    id: str
    uuid: str
    connection: str
    queue: str
    payload: str
    exception: str
    failed_at: str
    waiting: bool = False  # in ``queues:failed-pending``, not yet in failed_jobs

    def to_json(self) -> bytes:
        fields = asdict(self)
        del fields["waiting"]
        return json.dumps(fields, ensure_ascii=False).encode()

    @classmethod
    def from_json(cls, raw: bytes) -> FailedJob:
        return cls(**json.loads(raw))

    @property
    def row(self) -> tuple[str, str, str, str, str, str]:
        """The ``failed_jobs`` values, in :data:`COLUMNS` order."""
        return (
            self.uuid,
            self.connection,
            self.queue,
            self.payload,
            self.exception,
            self.failed_at,
        )

    @classmethod
    def from_row(cls, row: tuple[Any, ...]) -> FailedJob:
        job_uuid, connection, queue, payload, exception, failed_at = row
        when = failed_at.strftime("%Y-%m-%d %H:%M:%S") if failed_at else ""
        return cls(job_uuid, job_uuid, connection, queue, payload, exception, when)


class FailedStore:
    """What both stores share: how an entry is made, and the Redis side of a failure."""

    def __init__(self, redis: aioredis.Redis, prefix: str, connection: str, timezone: str) -> None:
        self.redis = redis
        self.prefix = prefix
        self.connection = connection
        self.timezone = ZoneInfo(timezone)

    def entry(self, job: Job, exception: str) -> FailedJob:
        job_id = job.uuid or str(uuid.uuid4())
        return FailedJob(
            id=job_id,
            uuid=job_id,
            connection=self.connection,
            queue=job.queue,
            payload=job.body.decode("utf-8", "replace"),
            exception=exception,
            failed_at=datetime.now(self.timezone).strftime("%Y-%m-%d %H:%M:%S"),
        )

    def reserved_key(self, job: Job) -> str:
        return QueueKeys(self.prefix, job.queue).reserved

    async def record(self, job: Job, exception: str, *, again: bool = False) -> FailedJob:
        """Record the failure, then drop the job's reservation.

        ``again``: an earlier try of this very record may have got through with its answer
        lost (the store went away); a reservation already gone then means that try
        succeeded, not that the job was taken back and runs again.
        """
        raise NotImplementedError

    async def all(self) -> list[FailedJob]:
        """Newest first, as ``queue:failed`` lists them."""
        raise NotImplementedError

    async def find(self, job_id: str) -> FailedJob | None:
        raise NotImplementedError

    async def count(self) -> int:
        """All entries, waiting ones included."""
        raise NotImplementedError

    async def waiting(self) -> int:
        """Entries waiting for the database to answer."""
        return 0

    async def waiting_entries(self) -> list[FailedJob]:
        """Those entries, newest first: all there is to list while the database is away."""
        return []

    async def write_pending(self) -> int:
        """Move waiting entries into the database; how many were moved."""
        return 0

    async def retry(self, job_id: str | None = None) -> list[str]:
        """Push failed jobs of this connection (one id, or all) back with attempts reset to 0."""
        raise NotImplementedError

    async def forget(self, job_id: str) -> bool:
        raise NotImplementedError

    async def flush(self) -> int:
        raise NotImplementedError


class RedisFailedStore(FailedStore):
    """The list ``queues:failed`` (JSON entries), for a pool without a database."""

    def __init__(self, redis: aioredis.Redis, prefix: str, connection: str, timezone: str) -> None:
        super().__init__(redis, prefix, connection, timezone)
        self.key = failed_key(prefix)
        self._record = redis.register_script(RECORD)
        self._retry = redis.register_script(RETRY)

    async def record(self, job: Job, exception: str, *, again: bool = False) -> FailedJob:
        entry = self.entry(job, exception)
        await self._record(keys=[self.key, self.reserved_key(job)], args=[entry.to_json(), job.raw])
        return entry

    async def _entries(self) -> list[tuple[bytes, FailedJob]]:
        raws = await self.redis.lrange(self.key, 0, -1)
        return [(raw, FailedJob.from_json(raw)) for raw in reversed(raws)]

    async def all(self) -> list[FailedJob]:
        return [entry for _, entry in await self._entries()]

    async def find(self, job_id: str) -> FailedJob | None:
        return next((e for _, e in await self._entries() if e.id == job_id), None)

    async def count(self) -> int:
        return await self.redis.llen(self.key)

    async def retry(self, job_id: str | None = None) -> list[str]:
        retried = []
        for raw, entry in await self._entries():
            if job_id is not None and entry.id != job_id:
                continue
            payload = _reset(entry.payload)
            if payload is None:
                continue
            keys = QueueKeys(self.prefix, entry.queue)
            if await self._retry(keys=[self.key, keys.list, keys.notify], args=[raw, payload]):
                retried.append(entry.id)
        return retried

    async def forget(self, job_id: str) -> bool:
        removed = 0
        for raw, entry in await self._entries():
            if entry.id == job_id:
                removed += await self.redis.lrem(self.key, 0, raw)
        return removed > 0

    async def flush(self) -> int:
        entries = await self._entries()
        for raw, _ in entries:
            await self.redis.lrem(self.key, 0, raw)
        return len(entries)


class TableFailedStore(FailedStore):
    """Laravel's ``failed_jobs`` table, shared with ``php artisan queue:*``."""

    def __init__(
        self,
        redis: aioredis.Redis,
        prefix: str,
        mysql: aiomysql.Pool,
        connection: str,
        timezone: str,
    ) -> None:
        super().__init__(redis, prefix, connection, timezone)
        self.mysql = mysql
        self.queues = Queues(redis, prefix, ())
        self.pending = pending_key(prefix)
        self._spool = redis.register_script(RECORD)
        self._retry_pending = redis.register_script(RETRY)

    async def record(self, job: Job, exception: str, *, again: bool = False) -> FailedJob:
        entry = self.entry(job, exception)
        try:
            await self._write(INSERT, entry.row)
        except MYSQL_ERRORS:
            # The pool must go on: the failure waits in Redis, the reservation dropped with it.
            keys = [self.pending, self.reserved_key(job)]
            await self._spool(keys=keys, args=[entry.to_json(), job.raw])
            return replace(entry, waiting=True)
        if not await self.redis.zrem(self.reserved_key(job), job.raw) and not again:
            # Its reservation expired and the job is running again: not failed after all.
            await self._execute(
                "DELETE FROM failed_jobs WHERE uuid = %s AND payload = %s AND exception = %s",
                (entry.uuid, entry.payload, exception),
            )
        return entry

    async def write_pending(self) -> int:
        """Each waiting entry's row is written (by uuid) before the entry leaves Redis: a
        crash in between, or two flushers at once, write the same row again, never two."""
        written = 0
        while raws := await self.redis.lrange(self.pending, 0, PENDING_BATCH - 1):
            for raw in raws:
                await self._write(INSERT, FailedJob.from_json(raw).row)
                written += await self.redis.lrem(self.pending, 1, raw)
        return written

    async def _pending(self) -> list[tuple[bytes, FailedJob]]:
        raws = await self.redis.lrange(self.pending, 0, -1)
        return [(raw, replace(FailedJob.from_json(raw), waiting=True)) for raw in reversed(raws)]

    async def all(self) -> list[FailedJob]:
        waiting = await self.waiting_entries()
        rows = await self._fetch(f"SELECT {COLUMNS} FROM failed_jobs ORDER BY id DESC")
        return waiting + [FailedJob.from_row(row) for row in rows]

    async def waiting_entries(self) -> list[FailedJob]:
        return [entry for _, entry in await self._pending()]

    async def find(self, job_id: str) -> FailedJob | None:
        waiting = next((e for _, e in await self._pending() if e.id == job_id), None)
        if waiting is not None:
            return waiting
        rows = await self._fetch(f"SELECT {COLUMNS} FROM failed_jobs WHERE uuid = %s", (job_id,))
        return FailedJob.from_row(rows[0]) if rows else None

    async def count(self) -> int:
        [(count,)] = await self._fetch("SELECT COUNT(*) FROM failed_jobs")
        return int(count) + await self.waiting()

    async def waiting(self) -> int:
        return await self.redis.llen(self.pending)

    async def retry(self, job_id: str | None = None) -> list[str]:
        retried = await self._retry_waiting(job_id)
        if job_id is None:
            ids = [row[0] for row in await self._fetch("SELECT uuid FROM failed_jobs ORDER BY id")]
        else:
            ids = [] if retried else [job_id]
        return retried + [i for i in ids if await self._retry_one(i)]

    async def _retry_waiting(self, job_id: str | None) -> list[str]:
        """Push waiting entries back; a row a flusher already wrote for one goes with it."""
        retried = []
        for raw, entry in await self._pending():
            payload = _reset(entry.payload) if job_id in (None, entry.id) else None
            if payload is None or entry.connection != self.connection:
                continue
            keys = QueueKeys(self.prefix, entry.queue)
            args = [raw, payload]
            if await self._retry_pending(keys=[self.pending, keys.list, keys.notify], args=args):
                retried.append(entry.id)
                await self._withdraw(entry.uuid)
        return retried

    async def _retry_one(self, job_id: str) -> bool:
        """Hold the row while pushing, delete it, commit: a concurrent retry finds nothing."""
        async with self.mysql.acquire() as conn, conn.cursor() as cur:
            await conn.begin()
            try:
                await cur.execute(
                    "SELECT connection, queue, payload FROM failed_jobs WHERE uuid = %s FOR UPDATE",
                    (job_id,),
                )
                row = await cur.fetchone()
                payload = _reset(row[2]) if row and row[0] == self.connection else None
                if payload is None:
                    await conn.rollback()
                    return False
                await self.queues.push(row[1], payload)
                await cur.execute("DELETE FROM failed_jobs WHERE uuid = %s", (job_id,))
                await conn.commit()
            except BaseException:
                await conn.rollback()
                raise
        return True

    async def forget(self, job_id: str) -> bool:
        waiting = [raw for raw, entry in await self._pending() if entry.id == job_id]
        if sum([await self.redis.lrem(self.pending, 0, raw) for raw in waiting]):
            await self._withdraw(job_id)
            return True
        return await self._execute("DELETE FROM failed_jobs WHERE uuid = %s", (job_id,)) > 0

    async def flush(self) -> int:
        """Every row and waiting entry, as ``queue:flush`` does."""
        rows = await self._execute("DELETE FROM failed_jobs")
        async with self.redis.pipeline(transaction=True) as pipe:
            waiting, _ = await pipe.llen(self.pending).delete(self.pending).execute()
        return rows + waiting

    async def _withdraw(self, job_uuid: str) -> None:
        """Delete the row a flusher may have written for a waiting entry just taken out of
        Redis (it died before taking the entry out itself). Best effort: with MySQL away
        the entry is retried or forgotten all the same, and such a row would stay."""
        with contextlib.suppress(*MYSQL_ERRORS):
            await self._write("DELETE FROM failed_jobs WHERE uuid = %s", (job_uuid,))

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """:meth:`_execute` within :data:`MYSQL_WAIT`; a connection given up on is closed,
        never handed out again with an answer still on its way."""
        async with asyncio.timeout(MYSQL_WAIT), self.mysql.acquire() as conn:
            try:
                async with conn.cursor() as cur:
                    return await cur.execute(sql, args)
            except BaseException:
                conn.close()
                raise

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        async with self.mysql.acquire() as conn, conn.cursor() as cur:
            return await cur.execute(sql, args)

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        async with self.mysql.acquire() as conn, conn.cursor() as cur:
            await cur.execute(sql, args)
            return list(await cur.fetchall())


def failed_store(
    redis: aioredis.Redis,
    prefix: str,
    mysql: aiomysql.Pool | None,
    *,
    connection: str = "redis",
    timezone: str = "UTC",
) -> FailedStore:
    """``failed_jobs`` when there is a database, else the Redis list."""
    if mysql is None:
        return RedisFailedStore(redis, prefix, connection, timezone)
    return TableFailedStore(redis, prefix, mysql, connection, timezone)


def _reset(payload: str) -> bytes | None:
    """The payload with attempts 0, as ``queue:retry`` pushes it; None if it is not JSON."""
    try:
        return with_attempts(payload.encode(), 0)
    except ValueError:
        return None  # retrying would only fail it again
