"""The pool: one fetcher fills free slots, each job runs as its own task.

Before every take the fetcher asks Redis once (:data:`workers.queues.RESERVE`) for as many
jobs as there are free slots, earlier queues first; when nothing waits it blocks on all the
notify lists at once. A job leaves ``:reserved`` only after its handler finished and its
fate (done, released for a retry, or recorded as failed) is written, so a killed process
loses nothing: its reservations expire and the jobs run again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

import aiohttp
import aiomysql
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.settings import Settings, SettingsError
from workers.failed import failed_store
from workers.handlers import (
    Handler,
    HandlerFailure,
    JobContext,
    PermanentError,
    UnknownOutcome,
    registry,
    summary,
)
from workers.jobs import Job
from workers.metrics import Metrics
from workers.php import PhpConfig, PhpWorkers, Released, RunnerFailed, RunnerLost
from workers.queues import Queues
from workers.retry import Fail, Policy, after_error, exceeded, parse_backoff, timeout_for
from workers.settings import WorkerSettings

log = logging.getLogger("workers")
outcomes = logging.getLogger("workers.jobs")  # one line per job outcome

# Longest wait to connect to the gateway or a webhook. A send that could not connect was
# not sent and is retried; the job's own timeout bounds everything after that.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)

REDIS_TICK = 0.1  # how late Redis may end a blocking wait (1 / its default hz)


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Everything the pool reads, after defaults (retry_after, grace) are filled in."""

    queues: tuple[str, ...]
    concurrency: int
    policy: Policy
    retry_after: float
    grace: float
    metrics_port: int
    gateway_url: str
    min_send_interval: Mapping[str, float]
    handlers: Mapping[str, str]
    retry_unknown_queues: frozenset[str]
    redis_prefix: str
    key_prefix: str
    api_token: str
    laravel_connection: str = "redis"
    timezone: str = "UTC"
    php: PhpConfig | None = None  # None: PHP job classes fail as unknown
    idle_wait: float = 1.0  # longest BLPOP: how soon jobs delayed by others are seen
    depth_interval: float = 5.0

    @classmethod
    def build(cls, settings: Settings, w: WorkerSettings) -> PoolConfig:
        """Check the worker settings (possibly overridden by flags) and fill in defaults."""

        def need(ok: bool, name: str, value: object, why: str) -> None:
            if not ok:
                raise SettingsError(f"workers.{name}: {value!r} {why}")

        need(bool(w.queues), "queues", w.queues, "names no queue")
        need(w.concurrency >= 1, "concurrency", w.concurrency, "must be at least 1")
        need(w.tries >= 0, "tries", w.tries, "must be 0 (no limit) or more")
        need(w.timeout > 0, "timeout", w.timeout, "must be greater than 0")
        backoff = parse_backoff(w.backoff)
        need(backoff is not None, "backoff", w.backoff, "is not a comma-separated list of seconds")
        retry_after = w.retry_after or w.timeout + 30
        need(retry_after > w.timeout, "retry_after", retry_after, "must exceed the timeout")
        need(w.grace >= 0, "grace", w.grace, "must be 0 or more")
        need(0 <= w.metrics_port <= 65535, "metrics_port", w.metrics_port, "is out of range")
        return cls(
            queues=w.queues,
            concurrency=w.concurrency,
            policy=Policy(w.tries, w.timeout, backoff or ()),
            retry_after=retry_after,
            grace=w.grace or w.timeout,
            metrics_port=w.metrics_port,
            gateway_url=w.gateway_url.rstrip("/"),
            min_send_interval=dict(w.min_send_interval),
            handlers=dict(w.handlers),
            retry_unknown_queues=frozenset(w.retry_unknown_queues),
            redis_prefix=settings.redis_prefix,
            key_prefix=settings.key_prefix,
            api_token=settings.laravel_api_token,
            laravel_connection=w.laravel_connection,
            timezone=w.timezone,
            php=PhpConfig(w.php_workers, w.php_binary, w.laravel_app_path, w.laravel_connection)
            if w.php_workers and w.laravel_app_path
            else None,
        )


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        redis: aioredis.Redis,
        mysql: aiomysql.Pool | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.queues = Queues(
            redis,
            config.redis_prefix,
            config.queues,
            key_prefix=config.key_prefix,
            intervals=config.min_send_interval,
        )
        self.failed = failed_store(
            redis,
            config.redis_prefix,
            mysql,
            connection=config.laravel_connection,
            timezone=config.timezone,
        )
        self.php = (
            PhpWorkers(config.php, config.policy, self.queues, config.retry_after)
            if config.php
            else None
        )
        self.handlers: dict[str, Handler] = registry(config.handlers)
        self.metrics = metrics or Metrics()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    def stop(self) -> None:
        """Take no new jobs; :meth:`run` returns once running ones finished or grace ran out."""
        self._stop.set()

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            self._http = http
            watcher = (
                asyncio.create_task(self._watch_depths()) if self.config.metrics_port else None
            )
            if self.php:
                self.php.start()
            try:
                await self._fetch()
                await self._drain()
            finally:
                if watcher:
                    watcher.cancel()
                if self.php:
                    await self.php.close()

    # --- taking jobs ------------------------------------------------------------------

    async def _fetch(self) -> None:
        while not self._stop.is_set():
            free = self.config.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._or_stop(self._slot_free.wait())
                continue
            try:
                take = await self.queues.reserve(free, self.config.retry_after)
                for queue in take.paced:
                    self.metrics.jobs.labels(queue, "paced").inc()
                for job in take.jobs:
                    self._start(job)
                if not take.jobs and not take.more:
                    await self._or_stop(self._idle(take.next_due))
            except Exception:
                # Redis unreachable, or a bug: never let the fetcher die and the pool go idle.
                log.exception("could not take jobs; trying again in 1 s")
                await self._or_stop(asyncio.sleep(1))

    async def _idle(self, due: float | None) -> None:
        """Wait for a push, or until the earliest delayed job is due, whichever comes first.

        Redis ends a blocking wait only on its own timer tick (every 100 ms at its default
        ``hz``), so the last stretch before a due time is slept here, to the millisecond.
        """
        wait = self.config.idle_wait
        if due is not None:
            left = due - time.time()
            if left <= REDIS_TICK:
                await asyncio.sleep(max(0.0, left) + 0.001)
                return
            wait = min(wait, left - REDIS_TICK)
        await self.queues.wait(wait)

    async def _or_stop(self, aw: Awaitable[object]) -> None:
        """Await ``aw`` unless stop() comes first (then ``aw`` is cancelled)."""
        work = asyncio.ensure_future(aw)
        stop = asyncio.ensure_future(self._stop.wait())
        await asyncio.wait((work, stop), return_when=asyncio.FIRST_COMPLETED)
        for task in (work, stop):
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._process(job))
        self._tasks.add(task)
        self.metrics.in_flight.inc()
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self.metrics.in_flight.dec()
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            # Redis went away while settling the job: it stays reserved and runs again.
            log.error("could not settle a job: %r", task.exception())

    async def _drain(self) -> None:
        """Give running jobs the grace period; what is still running stays reserved."""
        if not self._tasks:
            return
        _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.grace)
        if pending:
            log.warning("%d jobs still running after grace; left reserved", len(pending))
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def _watch_depths(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                self.metrics.observe_depths(await self.queues.depths())
            await asyncio.sleep(self.config.depth_interval)

    # --- running one job --------------------------------------------------------------

    async def _process(self, job: Job) -> None:
        started = time.monotonic()
        refusal = self._refusal(job)
        if refusal:
            outcome = await self._fail(job, refusal, refusal)
        else:
            timeout = timeout_for(job.payload or {}, self.config.policy)
            async with self._handler(job) as handler:
                error, timed_out = await self._call(handler, job, timeout)
            outcome = await self._settle(job, error, timed_out)
        outcomes.info(
            "%s on %s: %s",
            job.name or "?",
            job.queue,
            outcome,
            extra={
                "fields": {
                    "queue": job.queue,
                    "job": job.name or "?",
                    "attempt": job.attempts,
                    "outcome": outcome,
                    "duration_ms": round((time.monotonic() - started) * 1000, 2),
                }
            },
        )

    def _handler(self, job: Job) -> contextlib.AbstractAsyncContextManager[Handler]:
        """The job's Python handler, else a warm PHP runner (held until the job is done)."""
        if job.name in self.handlers or self.php is None:
            return contextlib.nullcontext(self.handlers[job.name])
        return self.php.lease(job)

    def _refusal(self, job: Job) -> str | None:
        """Why a job fails without running: unreadable, unknown, or out of tries or time."""
        if job.payload is None:
            return f"InvalidPayload: {job.error}"
        if job.name not in self.handlers and not (self.php and self.php.runs(job)):
            return f"UnknownJob: no handler for job {job.name!r}"
        if exceeded(job.payload, job.attempts, self.config.policy, time.time()):
            return (
                f"MaxAttemptsExceeded: {job.name} has been attempted too many times or run"
                f" too long (attempt {job.attempts})"
            )
        return None

    async def _settle(self, job: Job, error: Exception | None, timed_out: bool) -> str:
        """Done, released for a retry, or failed (the outcome); then the reservation goes."""
        if timed_out:
            self.metrics.jobs.labels(job.queue, "timed_out").inc()
        if error is None:
            await self.queues.delete(job)
            self.metrics.jobs.labels(job.queue, "done").inc()
            return "done"
        if isinstance(error, Released):  # Laravel released the PHP job
            log.info(
                "%s on %s attempt %d: %s; again in %g s",
                job.name,
                job.queue,
                job.attempts,
                error.summary,
                error.delay,
            )
            await self.queues.release(job, error.delay)
            self.metrics.jobs.labels(job.queue, "retried").inc()
            return "released"
        if isinstance(error, RunnerLost):  # outcome unknown: it runs again after its reservation
            log.warning("%s on %s left reserved: %s", job.name, job.queue, error)
            return "left reserved"
        if isinstance(error, RunnerFailed):  # Laravel failed it, failed() hook and all
            return await self._fail(job, str(error), summary(error), hook=False)
        text = "".join(traceback.format_exception(error)).rstrip()
        if isinstance(error, PermanentError):
            return await self._fail(job, text, summary(error))
        decision = after_error(
            job.payload or {},
            job.attempts,
            self.config.policy,
            time.time(),
            timed_out=timed_out,
            unknown=isinstance(error, UnknownOutcome),
            retry_unknown=job.queue in self.config.retry_unknown_queues,
            wait=error.retry_after if isinstance(error, HandlerFailure) else None,
        )
        if isinstance(decision, Fail):
            why = f"{summary(error)} ({decision.reason})"
            return await self._fail(job, f"{text}\n({decision.reason})", why)
        log.info(
            "%s on %s attempt %d: %s; again in %g s",
            job.name,
            job.queue,
            job.attempts,
            summary(error),
            decision.delay,
        )
        log.debug("%s attempt %d: %s", job.name, job.attempts, error)
        await self.queues.release(job, decision.delay)
        self.metrics.jobs.labels(job.queue, "retried").inc()
        return "retried"

    async def _call(
        self, handler: Handler, job: Job, timeout: float
    ) -> tuple[Exception | None, bool]:
        """Run the handler under its timeout; returns (its exception, whether it timed out)."""
        assert self._http is not None
        context = JobContext(
            job, self._http, self.redis, self.config.gateway_url, self.config.api_token
        )
        keeper = (
            asyncio.create_task(self._keep_reserved(job))
            if timeout >= self.config.retry_after
            else None
        )
        started = time.monotonic()
        deadline = asyncio.timeout(timeout)
        try:
            async with deadline:
                await handler(context)
        except Exception as exc:
            if not deadline.expired():
                return exc, False
            message = f"{job.name} timed out after {timeout:g} s"
            if context.progress.maybe_sent:
                return UnknownOutcome(f"{message} with its request in flight"), True
            return TimeoutError(message), True
        finally:
            self.metrics.duration.labels(job.queue).observe(time.monotonic() - started)
            if keeper:
                keeper.cancel()
        return None, False

    async def _keep_reserved(self, job: Job) -> None:
        """A job allowed to run longer than retry_after keeps pushing its expiry out."""
        while True:
            await asyncio.sleep(self.config.retry_after / 2)
            with contextlib.suppress(RedisError, OSError):
                await self.queues.extend(job, self.config.retry_after)

    async def _fail(self, job: Job, exception: str, why: str, *, hook: bool = True) -> str:
        """Record the failure; the log says only ``why``, which holds no personal data."""
        if hook and self.php and self.php.runs(job) and job.payload is not None:
            # As Laravel fails a job itself: the job's failed() hook runs, and the store
            # keeps PHP's exception.
            exception = await self.php.fail(job) or exception
        log.warning("failed %s on %s: %s", job.name or "?", job.queue, why)
        await self.failed.record(job, exception)
        self.metrics.jobs.labels(job.queue, "failed").inc()
        return "failed"
