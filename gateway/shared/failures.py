"""Failed jobs and dead-lettered webhooks: the operations ``workers failed`` and the console
share, so a retry from either is the same step (the store's and the outbox's own scripts).

Both programs open them from the same settings (:func:`open_failures`): the failed store is
``failed_jobs`` when ``mysql_dsn`` is set, else the Redis list; the dead letters are the
webhook outbox's. Nothing here prints: the CLI and the admin API each say it their way.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import aiomysql
import redis.asyncio as aioredis

from gateway.shared.laravel.failed import MYSQL_ERRORS, FailedJob, FailedStore, failed_store
from gateway.shared.outbox import DeadLetter, Outbox
from gateway.shared.redis_url import redis_client
from gateway.shared.settings import MySQLParams, Settings

HEADLINE = 100  # characters of an exception's headline in a listing


async def mysql_pool(dsn: str) -> aiomysql.Pool | None:
    """A small pool for ``failed_jobs``; ``None`` when no DSN is configured."""
    if not dsn:
        return None
    return await aiomysql.create_pool(
        **asdict(MySQLParams.from_dsn(dsn)),
        minsize=0,
        maxsize=2,
        connect_timeout=5,
        autocommit=True,
        charset="utf8mb4",
    )


@dataclass(frozen=True, slots=True)
class Listing:
    """One page of failed jobs, newest first."""

    jobs: list[FailedJob]
    total: int  # of the filter, all pages
    database_error: str | None = None  # the database did not answer: only Redis' are seen


@dataclass(frozen=True, slots=True)
class Retried:
    """What a retry did: pushed back, and why each other one asked for was not."""

    retried: list[str]
    skipped: dict[str, str] = field(default_factory=dict)


class Failures:
    """The failed store and the outbox's dead letters, as one set of operations."""

    def __init__(self, store: FailedStore, outbox: Outbox) -> None:
        self.store, self.outbox = store, outbox

    async def jobs(self, queue: str | None = None, limit: int = 0, offset: int = 0) -> Listing:
        """Failed jobs of ``queue`` (all when None), ``limit`` of them from ``offset``
        (0: no limit). With the database away, those waiting for it, and why."""
        error = None
        try:
            entries = await self.store.all()
        except MYSQL_ERRORS as exc:
            error = type(exc).__name__
            entries = await self.store.waiting_entries()
        if queue:
            entries = [e for e in entries if e.queue == queue]
        page = entries[offset : offset + limit] if limit else entries[offset:]
        return Listing(page, len(entries), error)

    async def job(self, job_id: str) -> FailedJob | None:
        return await self.store.find(job_id)

    async def retry(
        self, job_id: str | None = None, *, queue: str | None = None, resend: bool = False
    ) -> Retried:
        """Push one failed job (or all of this connection's, of ``queue`` if given) back
        onto its queue with attempts reset; each one not pushed says why."""
        store = self.store
        if job_id is not None:
            entry = await store.find(job_id)
            if entry is None:
                return Retried([], {job_id: "no such failed job"})
            if entry.connection != store.connection:
                why = (
                    f"on connection {entry.connection!r}, not {store.connection!r}:"
                    " retry it with php artisan queue:retry"
                )
                return Retried([], {job_id: why})
            wanted = [job_id]
        else:
            listing = await self.jobs(queue)
            wanted = [e.id for e in listing.jobs if e.connection == store.connection]
        if job_id is None and queue:
            retried = [i for i in wanted for done in [await store.retry(i, resend=resend)] if done]
        else:
            retried = await store.retry(job_id, resend=resend)
        skipped = {i: await self._not_retried(i) for i in wanted if i not in retried}
        return Retried(retried, skipped)

    async def _not_retried(self, job_id: str) -> str:
        if await self.store.find(job_id) is None:
            return "no longer in the failed store (retried or forgotten meanwhile, e.g. by PHP)"
        return "its payload is not a JSON object, so it cannot run"

    async def forget(self, job_id: str) -> bool:
        return await self.store.forget(job_id)

    async def flush(self) -> int:
        """Every failed job, as ``queue:flush`` does (dead letters are flushed apart)."""
        return await self.store.flush()

    async def letters(self) -> list[DeadLetter]:
        """Dead-lettered webhook events, oldest first."""
        return await self.outbox.dead_letters()

    async def letter(self, letter_id: str) -> DeadLetter | None:
        return next((x for x in await self.letters() if x.id == letter_id), None)

    async def retry_letter(self, letter_id: str) -> bool:
        """Deliver it again, at the end of its session's lane."""
        return await self.outbox.requeue(letter_id, time.time())

    async def drop_letter(self, letter_id: str) -> bool:
        return await self.outbox.forget(letter_id)


@contextlib.asynccontextmanager
async def open_failures(
    settings: Settings, *, connection: str = "redis", timezone: str = "UTC"
) -> AsyncIterator[Failures]:
    """The failed store and the outbox of ``settings``, with their own connections."""
    redis: aioredis.Redis = redis_client(
        settings.redis_url, socket_timeout=10, socket_connect_timeout=5
    )
    mysql = await mysql_pool(settings.mysql_dsn)
    try:
        store = failed_store(
            redis, settings.redis_prefix, mysql, connection=connection, timezone=timezone
        )
        yield Failures(store, Outbox(redis, settings.key_prefix))
    finally:
        await redis.aclose()
        if mysql is not None:
            mysql.close()
            await mysql.wait_closed()


def job_name(payload: str) -> str:
    """``displayName`` (a PHP job's class), else ``job``."""
    try:
        decoded = json.loads(payload)
        return str(decoded.get("displayName") or decoded.get("job") or "?")
    except (ValueError, AttributeError):
        return "?"


def headline(exception: str, width: int = HEADLINE) -> str:
    """The line that says what went wrong (PHP's first line, a Python traceback's last),
    within ``width`` characters and never cut inside a JSON answer it quotes: that is
    replaced by its ``error`` or ``message``, or left out, marked ``…``."""
    lines = exception.strip().splitlines()
    if not lines:
        return ""
    line = _python_headline(lines) if lines[0].startswith("Traceback (") else lines[0].strip()
    if len(line) <= width:
        return line
    start = min((i for i in (line.find("{"), line.find("[")) if i >= 0), default=-1)
    if start >= 0:
        before, quoted = line[:start].rstrip(), line[start:]
        said = _said(quoted)
        line = f"{before} {said}" if said else f"{before} …"
        if len(line) <= width:
            return line
    cut = line[: width - 1]
    return (cut.rsplit(" ", 1)[0] if " " in cut else cut) + "…"


def _python_headline(lines: list[str]) -> str:
    """A traceback's exception line, with the pool's notes after it (``(tried 3 times)``)."""
    notes: list[str] = []
    for line in reversed(lines):
        if line.startswith("(") and line.endswith(")"):
            notes.insert(0, line)
        elif line and not line[0].isspace():
            return " ".join([line.strip(), *notes])
    return lines[-1].strip()


def _said(quoted: str) -> str | None:
    """What a quoted JSON answer says: its ``error`` or ``message``."""
    try:
        answer = json.loads(quoted)
    except ValueError:
        return None
    said = answer.get("error") or answer.get("message") if isinstance(answer, dict) else None
    return str(said) if isinstance(said, str | int | float) else None


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


def job_summary(entry: FailedJob) -> dict[str, Any]:
    """A failed job in a listing: its headline, not its whole exception or payload."""
    return {
        "id": entry.id,
        "queue": entry.queue,
        "connection": entry.connection,
        "job": job_name(entry.payload),
        "failed_at": entry.failed_at,
        "exception": headline(entry.exception),
        "waiting": entry.waiting,
        "refused": entry.refused or None,
    }


def job_detail(entry: FailedJob) -> dict[str, Any]:
    """A failed job whole: payload and exception as stored."""
    return job_summary(entry) | {"exception": entry.exception, "payload": entry.payload}


def letter_summary(letter: DeadLetter) -> dict[str, Any]:
    """A dead-lettered webhook event, without its body."""
    return {
        "id": letter.id,
        "event": letter.event,
        "lane": letter.lane,
        "instance": letter.instance,
        "received": _iso(letter.received),
        "dead_at": _iso(letter.dead_at),
        "attempts": letter.attempts,
        "status": letter.status,
        "error": headline(letter.error),
    }


def letter_detail(letter: DeadLetter) -> dict[str, Any]:
    return letter_summary(letter) | {
        "error": letter.error,
        "path": letter.path,
        "body": letter.body.decode("utf-8", "replace"),
    }
