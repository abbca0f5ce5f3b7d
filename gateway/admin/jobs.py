"""Admin calls on the queues, the failed jobs and the dead-lettered webhooks.

They run the operations ``workers failed`` runs (``gateway.shared.failures``), on the
failed store and outbox of the gateway's settings, opened on first use with connections of
their own and opened again when a reload changes those settings.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import asdict
from typing import Any, TypeVar

import pymysql
from aiohttp import web
from redis.exceptions import RedisError

from gateway.admin.api import AdminError, admin, json_body, query_int
from gateway.lifecycle.process import Gateway
from gateway.shared.failures import (
    Failures,
    job_detail,
    job_summary,
    letter_detail,
    letter_summary,
    open_failures,
)
from gateway.shared.laravel.failed import MYSQL_ERRORS
from gateway.shared.laravel.queues import Queues
from gateway.shared.laravel.throughput import throughput
from gateway.shared.settings import Settings

T = TypeVar("T")
THROUGHPUT_MINUTES = 5
MAX_PAGE = 500
_ID = re.compile(r"[A-Za-z0-9_.:@-]{1,255}")
_QUEUE = re.compile(r"[^\x00-\x20\x7f]{1,255}")
STORE_ERRORS = (RedisError, OSError, TimeoutError, pymysql.err.MySQLError, *MYSQL_ERRORS)


class FailuresHolder:
    """The failed store and outbox for the settings in force, opened when first asked."""

    def __init__(self) -> None:
        self._key: tuple[Any, ...] | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self._failures: Failures | None = None
        self._lock = asyncio.Lock()

    async def get(self, settings: Settings) -> Failures:
        key = (settings.redis_url, settings.redis_prefix, settings.mysql_dsn, settings.workers)
        async with self._lock:
            if self._failures is None or key != self._key:
                await self.close()
                stack = contextlib.AsyncExitStack()
                # (the timezone only dates failures, which the gateway never records)
                opened = open_failures(settings, connection=settings.workers.laravel_connection)
                self._failures = await stack.enter_async_context(opened)
                self._stack, self._key = stack, key
            return self._failures

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
        self._stack = self._failures = self._key = None


FAILURES = web.AppKey("failures", FailuresHolder)


async def failures_ctx(app: web.Application) -> AsyncIterator[None]:
    app[FAILURES] = FailuresHolder()
    yield
    await app[FAILURES].close()


StoreHandler = Callable[[web.Request, Gateway, Failures], Awaitable[web.Response]]


def stored(template: str) -> Callable[[StoreHandler], Callable[[web.Request], Awaitable[Any]]]:
    """An admin call on the failed store: a store that does not answer is a 503, in JSON."""

    def wrap(handler: StoreHandler) -> Callable[[web.Request], Awaitable[Any]]:
        @admin(template)
        async def call(request: web.Request, gw: Gateway) -> web.Response:
            try:
                failures = await request.app[FAILURES].get(gw.settings)
                return await handler(request, gw, failures)
            except STORE_ERRORS as exc:
                raise AdminError(
                    503, f"The failed store does not answer ({type(exc).__name__})"
                ) from None

        return call

    return wrap


def _item(request: web.Request) -> str:
    item = request.match_info["id"]
    if not _ID.fullmatch(item):
        raise AdminError(400, "The id must be 1-255 characters of A-Z a-z 0-9 _ . : @ -")
    return item


def _found(found: T | None, what: str, item: str) -> T:
    """``found``, or the 404 naming what was not."""
    if not found:
        raise AdminError(404, f"No such {what}", id=item)
    return found


def _queue(request: web.Request) -> str | None:
    queue = request.query.get("queue") or None
    if queue is not None and not _QUEUE.fullmatch(queue):
        raise AdminError(400, "queue must be 1-255 characters, no spaces or control characters")
    return queue


@stored("/gateway/queues")
async def queues(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    """Each queue's depth and oldest job, the jobs finished in the last minutes, the
    failed count and the webhook backlog."""
    s, now = gw.settings, time.time()
    redis = failures.store.redis
    depths = await Queues(redis, s.redis_prefix, s.workers.queues).depths()
    rates = await throughput(redis, s.key_prefix, s.workers.queues, now, THROUGHPUT_MINUTES)
    try:
        failed: int | None = await failures.store.count()
    except STORE_ERRORS:
        failed = None
    backlog = await failures.outbox.backlog(now)
    return web.json_response(
        {
            "success": True,
            "queues": [asdict(d) | rates[d.queue] for d in depths],
            "throughput_minutes": THROUGHPUT_MINUTES,
            "failed": failed,
            "failed_waiting": await failures.store.waiting(),
            "webhooks": asdict(backlog),
        }
    )


@stored("/gateway/failed")
async def failed_jobs(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    limit = query_int(request, "limit", 50, 1, MAX_PAGE)
    offset = query_int(request, "offset", 0, 0, 10**9)
    listing = await failures.jobs(_queue(request), limit, offset)
    return web.json_response(
        {
            "success": True,
            "jobs": [job_summary(e) for e in listing.jobs],
            "total": listing.total,
            "offset": offset,
            "limit": limit,
            "database_error": listing.database_error,
        }
    )


@stored("/gateway/failed/{id}")
async def failed_job(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    item = _item(request)
    entry = _found(await failures.job(item), "failed job", item)
    return web.json_response({"success": True, "job": job_detail(entry)})


@stored("/gateway/failed/{id}/retry")
async def retry_job(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    """Back onto its queue with attempts reset (``{"resend": true}``: with a fresh uuid)."""
    item = _item(request)
    body = await json_body(request, '{"resend": false}')
    if body is not None and not (isinstance(body, dict) and body.get("resend", False) in (0, 1)):
        raise AdminError(400, 'The body must be {"resend": true} or {"resend": false}')
    done = await failures.retry(item, resend=bool(body and body.get("resend")))
    if not done.retried:
        why = done.skipped.get(item, "not retried")
        raise AdminError(404 if why == "no such failed job" else 409, why, id=item)
    return web.json_response({"success": True, "retried": done.retried})


@stored("/gateway/failed/{id}")
async def forget_job(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    item = _item(request)
    _found(await failures.forget(item), "failed job", item)
    return web.json_response({"success": True, "forgotten": item})


@stored("/gateway/dead-letters")
async def dead_letters(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    letters = await failures.letters()
    return web.json_response(
        {"success": True, "dead_letters": [letter_summary(x) for x in letters]}
    )


@stored("/gateway/dead-letters/{id}")
async def dead_letter(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    item = _item(request)
    letter = _found(await failures.letter(item), "dead letter", item)
    return web.json_response({"success": True, "dead_letter": letter_detail(letter)})


@stored("/gateway/dead-letters/{id}/retry")
async def retry_letter(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    item = _item(request)
    _found(await failures.retry_letter(item), "dead letter", item)
    return web.json_response({"success": True, "retried": [item]})


@stored("/gateway/dead-letters/{id}")
async def drop_letter(request: web.Request, gw: Gateway, failures: Failures) -> web.Response:
    item = _item(request)
    _found(await failures.drop_letter(item), "dead letter", item)
    return web.json_response({"success": True, "dropped": item})


def add_job_routes(app: web.Application) -> None:
    """Register these calls; before ``add_admin_routes``, whose catch-all takes the rest."""
    app.cleanup_ctx.append(failures_ctx)
    app.router.add_get("/gateway/queues", queues)
    app.router.add_get("/gateway/failed", failed_jobs)
    app.router.add_get("/gateway/failed/{id}", failed_job)
    app.router.add_post("/gateway/failed/{id}/retry", retry_job)
    app.router.add_delete("/gateway/failed/{id}", forget_job)
    app.router.add_get("/gateway/dead-letters", dead_letters)
    app.router.add_get("/gateway/dead-letters/{id}", dead_letter)
    app.router.add_post("/gateway/dead-letters/{id}/retry", retry_letter)
    app.router.add_delete("/gateway/dead-letters/{id}", drop_letter)
