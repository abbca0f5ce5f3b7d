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
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import aiomysql
import pymysql
import redis.asyncio as aioredis

from gateway.shared.laravel.jobs import Job, PayloadError, decode, encode, without_pace
from gateway.shared.laravel.queues import QueueKeys, Queues, failed_key, pending_key
from gateway.shared.tasks import within

log = logging.getLogger("workers")

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
if KEYS[4] then redis.call('set', KEYS[4], 1, 'EX', ARGV[3]) end
return 1
"""

# KEYS: pending (or refused) list, taken marker. ARGV: entry, marker TTL. A forget that
# takes a waiting entry marks it taken, as a retry does (see TableFailedStore._flush_one).
TAKE = """
if redis.call('lrem', KEYS[1], 0, ARGV[1]) == 0 then return 0 end
redis.call('set', KEYS[2], 1, 'EX', ARGV[2])
return 1
"""
TAKEN_TTL = 3600  # seconds a taken entry's marker lasts: far longer than a flusher's write


def refused_key(prefix: str) -> str:
    """The Redis list of failures MySQL refused to take (no table, a missing column...)."""
    return f"{prefix}queues:failed-refused"


def unreachable(error: BaseException) -> bool:
    """MySQL did not answer (or not now): wait and write again. Anything else the server
    said about a write (no table, unknown column, a row too large, bad data) is a refusal
    of that row, which no retry will change."""
    if isinstance(error, OSError | aiomysql.InterfaceError | TimeoutError):
        return True
    if isinstance(error, pymysql.err.MySQLError) and error.args:
        code = error.args[0]
        return not isinstance(code, int) or code >= 2000 or code in TRANSIENT_CODES
    return False


# KEYS: pending list, refused list. ARGV: entry, entry with the refusal. A flusher moves an
# entry MySQL refused only if it is still waiting (a retry or forget may have taken it).
SET_ASIDE = """
if redis.call('lrem', KEYS[1], 1, ARGV[1]) == 0 then return 0 end
redis.call('rpush', KEYS[2], ARGV[2])
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
# Server errors that mean "not now" rather than "not this row": too many connections, a
# shutdown, a lock wait or deadlock, a killed connection, access denied (a config fix away).
TRANSIENT_CODES = frozenset({1040, 1044, 1045, 1053, 1205, 1213, 1927})
# "Got a packet bigger than max_allowed_packet", "row size too large".
TOO_LARGE_CODES = frozenset({1153, 1118, 1301})
NO_SUCH_TABLE = 1146
ROW_MARGIN = 64 * 1024  # bytes a row keeps below max_allowed_packet (SQL, escaping)
CUT_NOTE = "\n[cut by the worker pool: {kept} of {size} bytes kept, the rest did not fit in MySQL]"
# How long a failure's write may take: a partitioned MySQL hangs rather than fails.
MYSQL_WAIT = 3.0
PENDING_BATCH = 100  # entries the flusher reads per round trip


class RowTooLarge(Exception):
    """A failed job's row MySQL cannot take even with its exception cut."""


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
    refused: str = ""  # why MySQL refused the row: kept in ``queues:failed-refused``

    def to_json(self) -> bytes:
        fields = asdict(self)
        del fields["waiting"]
        if not self.refused:
            del fields["refused"]
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
            payload=without_pace(job.body).decode("utf-8", "replace"),
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

    async def retry(self, job_id: str | None = None, *, resend: bool = False) -> list[str]:
        """Push failed jobs of this connection (one id, or all) back with attempts reset to 0;
        ``resend``: as new jobs, with a fresh uuid, so their sends get new idempotency keys."""
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

    async def retry(self, job_id: str | None = None, *, resend: bool = False) -> list[str]:
        retried = []
        for raw, entry in await self._entries():
            if job_id is not None and entry.id != job_id:
                continue
            payload = _reset(entry.payload, resend=resend)
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
        self.refused_list = refused_key(prefix)
        self._spool = redis.register_script(RECORD)
        self._set_aside = redis.register_script(SET_ASIDE)
        self._retry_pending = redis.register_script(RETRY)
        self._take = redis.register_script(TAKE)
        self._packet: int | None = None  # max_allowed_packet, read once
        self._refusals: set[str] = set()  # reasons already logged

    async def record(self, job: Job, exception: str, *, again: bool = False) -> FailedJob:
        entry = self.entry(job, exception)
        try:
            await self._write(INSERT, (await self._fitted(entry)).row)
        except Exception as exc:
            # Never left reserved: MySQL away, the failure waits in Redis for the flusher;
            # MySQL refusing the row, it is kept in Redis for good, with the reason.
            waiting = unreachable(exc)
            kept = entry if waiting else replace(entry, refused=self._refusal(exc))
            keys = [self.pending if waiting else self.refused_list, self.reserved_key(job)]
            await self._spool(keys=keys, args=[kept.to_json(), job.raw])
            return replace(kept, waiting=waiting)
        if not await self.redis.zrem(self.reserved_key(job), job.raw) and not again:
            # Its reservation expired and the job is running again: not failed after all.
            await self._execute(
                "DELETE FROM failed_jobs WHERE uuid = %s AND payload = %s AND exception = %s",
                (entry.uuid, entry.payload, exception),
            )
        return entry

    async def write_pending(self) -> int:
        """Each waiting entry's row is written (by uuid) before the entry leaves Redis: a
        crash in between, or two flushers at once, write the same row again, never two.
        An entry MySQL refuses moves to ``queues:failed-refused`` and the others go on; only
        MySQL not answering stops the round (raised, for the flusher to wait)."""
        written = 0
        while raws := await self.redis.lrange(self.pending, 0, PENDING_BATCH - 1):
            for raw in raws:
                written += await self._flush_one(raw)
        return written

    async def _flush_one(self, raw: bytes) -> int:
        entry = FailedJob.from_json(raw)
        try:
            await self._write(INSERT, (await self._fitted(entry)).row)
        except Exception as exc:
            if unreachable(exc):
                raise
            kept = replace(entry, refused=self._refusal(exc)).to_json()
            await self._set_aside(keys=[self.pending, self.refused_list], args=[raw, kept])
            return 0
        if await self.redis.lrem(self.pending, 1, raw):
            return 1
        if await self.redis.exists(self._taken(entry.uuid)):
            # A retry or forget took the entry while its row was being written (and could
            # not delete a row not yet there): the row must not outlive it.
            await self._write(
                "DELETE FROM failed_jobs WHERE uuid = %s AND payload = %s AND failed_at = %s",
                (entry.uuid, entry.payload, entry.failed_at),
            )
        return 0

    def _taken(self, job_uuid: str) -> str:
        """The marker a retry or forget leaves on a waiting entry it took."""
        return f"{self.pending}:taken:{job_uuid}"

    def _refusal(self, error: BaseException) -> str:
        """Why MySQL refused a row, logged once per kind, kept with the entry."""
        reason = _cause(error)
        if reason not in self._refusals:
            self._refusals.add(reason)
            log.error(
                "MySQL refused a failed job's row (%s); such failures are kept in Redis"
                " (queues:failed-refused) and listed, retried and forgotten as any other",
                reason,
            )
        return reason

    async def _fitted(self, entry: FailedJob) -> FailedJob:
        """The entry in a form MySQL takes: a row over ``max_allowed_packet`` has its
        exception cut, with a note (the payload is never cut: it must stay runnable)."""
        limit = await self._packet_limit() - ROW_MARGIN
        size = sum(len(v.encode()) for v in entry.row)
        if size <= limit:
            return entry
        room = limit - (size - len(entry.exception.encode())) - len(CUT_NOTE) - 40
        if room < 0:
            raise RowTooLarge(
                f"the payload alone exceeds max_allowed_packet ({limit + ROW_MARGIN} bytes)"
            )
        return replace(entry, exception=_cut(entry.exception, room))

    async def _packet_limit(self) -> int:
        if self._packet is None:
            async with asyncio.timeout(MYSQL_WAIT):
                [(value,)] = await self._fetch("SELECT @@max_allowed_packet")
            self._packet = int(value)
        return self._packet

    async def _pending(self) -> list[tuple[str, bytes, FailedJob]]:
        """The entries kept in Redis, newest first, each with its list: those waiting for
        MySQL, then those it refused."""
        held = []
        for key in (self.pending, self.refused_list):
            raws = await self.redis.lrange(key, 0, -1)
            waiting = key == self.pending
            held += [(key, raw, replace(FailedJob.from_json(raw), waiting=waiting)) for raw in raws]
        return held[::-1]

    async def all(self) -> list[FailedJob]:
        waiting = await self.waiting_entries()
        rows = await self._fetch(f"SELECT {COLUMNS} FROM failed_jobs ORDER BY id DESC")
        return waiting + [FailedJob.from_row(row) for row in rows]

    async def waiting_entries(self) -> list[FailedJob]:
        return [entry for _, _, entry in await self._pending()]

    async def find(self, job_id: str) -> FailedJob | None:
        waiting = next((e for _, _, e in await self._pending() if e.id == job_id), None)
        if waiting is not None:
            return waiting
        rows = await self._fetch(f"SELECT {COLUMNS} FROM failed_jobs WHERE uuid = %s", (job_id,))
        return FailedJob.from_row(rows[0]) if rows else None

    async def count(self) -> int:
        [(count,)] = await self._fetch("SELECT COUNT(*) FROM failed_jobs")
        return int(count) + await self.waiting() + await self.redis.llen(self.refused_list)

    async def waiting(self) -> int:
        return await self.redis.llen(self.pending)

    async def retry(self, job_id: str | None = None, *, resend: bool = False) -> list[str]:
        retried = await self._retry_waiting(job_id, resend)
        if job_id is None:
            ids = [row[0] for row in await self._fetch("SELECT uuid FROM failed_jobs ORDER BY id")]
        else:
            ids = [] if retried else [job_id]
        return retried + [i for i in ids if await self._retry_one(i, resend)]

    async def _retry_waiting(self, job_id: str | None, resend: bool) -> list[str]:
        """Push waiting entries back; a row a flusher already wrote for one goes with it."""
        retried = []
        for key, raw, entry in await self._pending():
            chosen = job_id in (None, entry.id)
            payload = _reset(entry.payload, resend=resend) if chosen else None
            if payload is None or entry.connection != self.connection:
                continue
            keys = QueueKeys(self.prefix, entry.queue)
            args = [raw, payload]
            marker = self._taken(entry.uuid)
            script_keys = [key, keys.list, keys.notify, marker]
            if await self._retry_pending(keys=script_keys, args=[*args, TAKEN_TTL]):
                retried.append(entry.id)
                await self._withdraw(entry.uuid)
        return retried

    async def _retry_one(self, job_id: str, resend: bool) -> bool:
        """Claim the row by deleting it, and push only if this delete removed it: Laravel's
        ``queue:retry`` reads, pushes, then deletes, so a row gone here (another retry,
        Laravel's, a forget) is someone else's to push; and once deleted here, a retry
        that reads after it finds nothing."""
        rows = await self._fetch(
            "SELECT connection, queue, payload FROM failed_jobs WHERE uuid = %s", (job_id,)
        )
        mine = rows and rows[0][0] == self.connection
        payload = _reset(rows[0][2], resend=resend) if mine else None
        if payload is None:
            return False
        if not await self._execute("DELETE FROM failed_jobs WHERE uuid = %s", (job_id,)):
            return False
        await self.queues.push(rows[0][1], payload)
        return True

    async def forget(self, job_id: str) -> bool:
        held = [(key, raw) for key, raw, entry in await self._pending() if entry.id == job_id]
        marker = self._taken(job_id)
        taken = [await self._take(keys=[key, marker], args=[raw, TAKEN_TTL]) for key, raw in held]
        if sum(taken):
            await self._withdraw(job_id)
            return True
        return await self._execute("DELETE FROM failed_jobs WHERE uuid = %s", (job_id,)) > 0

    async def flush(self) -> int:
        """Every row and waiting entry, as ``queue:flush`` does."""
        rows = await self._execute("DELETE FROM failed_jobs")
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.llen(self.pending).llen(self.refused_list)
            waiting, refused, _ = await pipe.delete(self.pending, self.refused_list).execute()
        return rows + waiting + refused

    async def _withdraw(self, job_uuid: str) -> None:
        """Delete the row a flusher may have written for a waiting entry just taken out of
        Redis (it died before taking the entry out itself). Best effort: with MySQL away
        the entry is retried or forgotten all the same, and such a row would stay."""
        with contextlib.suppress(*MYSQL_ERRORS, pymysql.err.MySQLError):
            await self._write("DELETE FROM failed_jobs WHERE uuid = %s", (job_uuid,))

    @contextlib.asynccontextmanager
    async def _connection(self) -> AsyncIterator[aiomysql.Connection]:
        """A pooled connection within :data:`MYSQL_WAIT`, even when aiomysql loses the
        cancellation (see ``within``); one a failure left in an unknown state is closed,
        never handed out again with an answer still on its way."""
        pool = self.mysql

        def discard(conn: aiomysql.Connection) -> None:
            conn.close()
            pool.release(conn)

        conn = await within(pool.acquire(), MYSQL_WAIT, late=discard)
        try:
            yield conn
        except BaseException:
            conn.close()
            raise
        finally:
            pool.release(conn)

    async def _write(self, sql: str, args: tuple[Any, ...]) -> int:
        """:meth:`_execute` within :data:`MYSQL_WAIT`."""
        async with asyncio.timeout(MYSQL_WAIT), self._connection() as conn, conn.cursor() as cur:
            return await cur.execute(sql, args)

    async def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> int:
        with _no_table():
            async with self._connection() as conn, conn.cursor() as cur:
                return await cur.execute(sql, args)
        return 0

    async def _fetch(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with _no_table():
            async with self._connection() as conn, conn.cursor() as cur:
                await cur.execute(sql, args)
                return list(await cur.fetchall())
        return []


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


@contextlib.contextmanager
def _no_table() -> Iterator[None]:
    """No failed_jobs table holds no failed job: reads find nothing (the failures are then
    all in Redis), rather than every listing failing."""
    try:
        yield
    except pymysql.err.ProgrammingError as exc:
        if exc.args[:1] != (NO_SUCH_TABLE,):
            raise


def _cut(text: str, room: int) -> str:
    """``text`` within ``room`` bytes (UTF-8, not split mid-character), with a note."""
    data = text.encode()
    kept = data[:room].decode("utf-8", "ignore")
    return kept + CUT_NOTE.format(kept=len(kept.encode()), size=len(data))


def _cause(error: BaseException) -> str:
    """The error's type and first line, short enough for one log line."""
    cause = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {cause}" if cause else type(error).__name__


def _reset(payload: str, *, resend: bool = False) -> bytes | None:
    """The payload as ``queue:retry`` pushes it (attempts 0), without ``paceSlot``; None if
    it is not a JSON object. Its uuid is kept, so a retried job whose send went out is
    answered from the gateway's store; ``resend`` gives it a fresh one (and ``id``, when
    that was the uuid), noting the old one as ``resentFrom``."""
    try:
        job = decode(payload)
    except PayloadError:
        return None  # retrying would only fail it again
    job.pop("paceSlot", None)
    job["attempts"] = 0
    if resend:
        old = job.get("uuid") or job.get("id")
        fresh = str(uuid.uuid4())
        if "id" in job and job["id"] == job.get("uuid"):
            job["id"] = fresh
        job["uuid"] = fresh
        job["resentFrom"] = old
    return encode(job)
