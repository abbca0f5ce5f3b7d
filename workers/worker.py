"""The pool: one fetcher fills free slots, each job runs as its own task.

Before every take the fetcher asks Redis once (``RESERVE`` in
:mod:`gateway.shared.laravel.queues`) for as many jobs as there are free slots, earlier
queues first, and of PHP jobs only as many as PHP processes are free; when nothing waits it
blocks on all the notify lists at once (and, with PHP jobs left waiting, for a process to
free), or sleeps until the earliest delayed job is due. A job leaves ``:reserved`` only after
its handler finished and its fate (done, released for a retry, or recorded as failed) is
written, so a killed process loses nothing: its reservations expire and the jobs run again.

A failure MySQL cannot take waits in Redis (see :mod:`gateway.shared.laravel.failed`) and the
pool goes on; the flusher writes it to ``failed_jobs`` once MySQL answers. A fate that cannot
be written because Redis is away is kept in memory, in order, and written by the fetcher
before it takes anything new; meanwhile the keeper goes on pushing out the reservation of
every job the process holds, so a finished job is not taken back and run again by anyone
while the outage lasts less than ``retry_after``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass, replace
from typing import Literal

import aiohttp
import aiomysql
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from gateway.shared.laravel.failed import MYSQL_ERRORS, FailedStore, failed_store
from gateway.shared.laravel.jobs import Job
from gateway.shared.laravel.queues import Queues, Take
from gateway.shared.laravel.throughput import Tally
from gateway.shared.redis_url import NotReplicated
from gateway.shared.settings import Settings, SettingsError
from gateway.shared.tasks import cancel_and_wait
from workers.connections import Replicated
from workers.handlers import (
    Handler,
    HandlerFailure,
    JobContext,
    PermanentError,
    UnknownOutcome,
    registry,
    summary,
)
from workers.metrics import WorkerMetrics
from workers.php import PhpConfig, PhpWorkers, Released, RunnerFailed, RunnerLost
from workers.retry import Fail, Policy, after_error, exceeded, parse_backoff, timeout_for
from workers.settings import WorkerSettings

log = logging.getLogger("workers")
outcomes = logging.getLogger("workers.jobs")  # one line per job outcome

# Longest wait to connect to the gateway or a webhook. A send that could not connect was
# not sent and is retried; the job's own timeout bounds everything after that.
HTTP_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=5)

REDIS_TICK = 0.1  # how late Redis may end a blocking wait (1 / its default hz)

# Redis or MySQL not answering, or Redis's replicas not confirming an outcome
# (redis_min_replicas): the outcome of a finished job waits in memory.
STORE_ERRORS = (
    RedisError,
    OSError,
    aiomysql.OperationalError,
    aiomysql.InterfaceError,
    NotReplicated,
)
REPLICA_WAIT = 1.0  # seconds an outcome's write may take to reach redis_min_replicas replicas
STORE_RETRY = 0.1  # seconds between tries to reach the store again
TALLY_INTERVAL = 2.0  # seconds between writes of the finished jobs' counts (throughput)
# How often the flusher looks for failures waiting for MySQL (also another process's, left
# by its death), and tries MySQL again while it does not answer.
PENDING_INTERVAL = 5.0
PENDING_RETRY = 1.0


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
    metrics_host: str = "127.0.0.1"
    timezone: str = "UTC"
    php: PhpConfig | None = None  # None: PHP job classes fail as unknown
    idle_wait: float = 1.0  # longest BLPOP: how soon jobs delayed by others are seen
    depth_interval: float = 5.0
    min_replicas: int = 0  # replicas that must confirm (WAIT) an outcome before it counts

    @property
    def keep_interval(self) -> float:
        """How often held reservations are pushed out: each keeps at least 90 % of
        ``retry_after`` (and all but 1 s of it) left at any time."""
        return min(1.0, self.retry_after / 10)

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
            metrics_host=w.metrics_host,
            gateway_url=w.gateway_url.rstrip("/"),
            min_send_interval=dict(w.min_send_interval),
            handlers=dict(w.handlers),
            retry_unknown_queues=frozenset(w.retry_unknown_queues),
            redis_prefix=settings.redis_prefix,
            key_prefix=settings.key_prefix,
            api_token=settings.laravel_api_token,
            laravel_connection=w.laravel_connection,
            timezone=w.timezone,
            min_replicas=settings.redis_min_replicas,
            php=PhpConfig(w.php_workers, w.php_binary, w.laravel_app_path, w.laravel_connection)
            if w.php_workers and w.laravel_app_path
            else None,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """A finished job's fate, written by :meth:`Pool._apply`: done; a retry (``retried``,
    or ``released`` by a PHP job itself) due at ``due`` (unix time); a failure with its
    ``exception`` text; or ``left reserved`` (nothing to write: it runs again after its
    reservation)."""

    job: Job
    kind: Literal["done", "retried", "released", "failed", "left reserved"]
    due: float = 0.0
    exception: str = ""
    tried: bool = False  # a write was tried and failed: it may have got through unanswered


class Pool:
    def __init__(
        self,
        config: PoolConfig,
        redis: aioredis.Redis,
        mysql: aiomysql.Pool | None = None,
        metrics: WorkerMetrics | None = None,
    ) -> None:
        self.config = config
        self.redis = redis
        self.mysql = mysql
        self.handlers: dict[str, Handler] = registry(config.handlers)
        self.queues, self.failed = self._stores(redis)
        self.php = PhpWorkers(config.php, config.policy) if config.php else None
        self.metrics = metrics or WorkerMetrics()
        self.tally = Tally(config.key_prefix)  # finished jobs, for the console's throughput
        self._tasks: dict[asyncio.Task[None], Job] = {}
        self._php_jobs = 0  # of those tasks, the jobs that run in PHP
        self._kept: deque[Outcome] = deque()  # finished, not yet written: the store was away
        self._away: tuple[str, float] | None = None  # which store stopped answering, when
        self._pending = asyncio.Event()  # a failure was left waiting for MySQL
        self._slot_free = asyncio.Event()
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._adopted = False  # an earlier version's pacing keys were moved over
        # redis_min_replicas: takes and outcomes are written, and WAITed for, on one
        # connection of their own; a take not yet confirmed waits here, unstarted.
        self._replicated = (
            Replicated(redis, config.min_replicas, REPLICA_WAIT) if config.min_replicas else None
        )
        self._settling, self._settled_failures = self.queues, self.failed
        if self._replicated is not None:
            self._settling, self._settled_failures = self._stores(self._replicated.client)
        self._unconfirmed: tuple[list[Job], int] | None = None  # a take, connects before it

    def _stores(self, redis: aioredis.Redis) -> tuple[Queues, FailedStore]:
        """The queues and the failed store, on ``redis``."""
        config = self.config
        queues = Queues(
            redis,
            config.redis_prefix,
            config.queues,
            key_prefix=config.key_prefix,
            intervals=config.min_send_interval,
            python_jobs=self.handlers,
        )
        failed = failed_store(
            redis,
            config.redis_prefix,
            self.mysql,
            connection=config.laravel_connection,
            timezone=config.timezone,
        )
        return queues, failed

    def stop(self) -> None:
        """Take no new jobs; :meth:`run` returns once running ones finished or grace ran out."""
        self._stop.set()

    @property
    def unsettled(self) -> int:
        """Finished jobs whose fate waits in memory for the store to answer."""
        return len(self._kept)

    async def run(self) -> None:
        async with aiohttp.ClientSession(timeout=HTTP_TIMEOUT) as http:
            self._http = http
            if self._replicated is not None:
                await self._replicated.start()
            helpers = [
                asyncio.create_task(self._keep_reserved()),
                asyncio.create_task(self._publish_tally()),
            ]
            if self.mysql is not None:
                helpers.append(asyncio.create_task(self._write_pending()))
            if self.config.metrics_port:
                helpers.append(asyncio.create_task(self._watch_depths()))
            if self.php:
                self.php.start()
            try:
                await self._fetch()
                await self._drain()
            finally:
                await cancel_and_wait(helpers)
                with contextlib.suppress(RedisError, OSError):
                    await self.tally.flush(self.redis, time.time())
                if self.php:
                    await self.php.close()
                if self._replicated is not None:
                    await self._replicated.close()

    # --- taking jobs ------------------------------------------------------------------

    async def _fetch(self) -> None:
        while not self._stop.is_set():
            free = self.config.concurrency - len(self._tasks)
            if free <= 0:
                self._slot_free.clear()
                await self._or_stop(self._slot_free.wait())
                continue
            try:
                await self._apply_kept()
                if self._unconfirmed is not None:
                    await self._confirm_take()
                if not self._adopted:
                    await self.queues.adopt_old_pacing()
                    self._adopted = True
                take = await self._take(free)
                self._store_back()
                for queue in take.paced:
                    self.metrics.jobs.labels(queue, "paced").inc()
                if self._replicated is None:
                    for job in take.jobs:
                        self._start(job)
                if not take.jobs and not take.more:
                    await self._or_stop(self._idle(take.next_due, take.php_left > 0))
            except STORE_ERRORS as exc:
                self._store_away(exc)
                await self._or_stop(asyncio.sleep(STORE_RETRY))
            except Exception:
                # A bug: never let the fetcher die and the pool go idle.
                log.exception("could not take jobs; trying again in 1 s")
                await self._or_stop(asyncio.sleep(1))

    async def _take(self, free: int) -> Take:
        """Reserve up to ``free`` jobs; PHP jobs only as many as PHP processes are free.

        With ``min_replicas`` the jobs start only once that many replicas have the take:
        else a failover could hand them out again while they run here.
        """
        php_free = -1
        if self.php is not None:
            self.php.freed.clear()  # from here on, a freed process wakes an idle fetcher
            php_free = self.php.free(self._php_jobs)
        if self._replicated is None:
            return await self.queues.reserve(free, self.config.retry_after, php_free)
        since = self._replicated.connects
        take = await self._settling.reserve(free, self.config.retry_after, php_free)
        if take.jobs:
            self._unconfirmed = (take.jobs, since)
            await self._confirm_take()
        return take

    async def _confirm_take(self) -> None:
        """Start the jobs of a take once it is confirmed; raises NotReplicated until then. A
        take whose connection was made again before its WAIT may be lost: its jobs are left
        unstarted, to run again when their reservation expires (if the take survived)."""
        assert self._unconfirmed is not None and self._replicated is not None
        jobs, since = self._unconfirmed
        acked = await self._replicated.acked(since)
        if acked is None:
            log.warning(
                "%d taken jobs left unstarted: Redis's connection changed before replicas"
                " confirmed their take; they run again once their reservations expire",
                len(jobs),
            )
        elif acked < self.config.min_replicas:
            raise NotReplicated(acked)
        else:
            for job in jobs:
                self._start(job)
        self._unconfirmed = None

    async def _idle(self, due: float | None, php_waiting: bool = False) -> None:
        """Wait for a push, until the earliest delayed job is due, or (PHP jobs were left
        waiting) until a PHP process frees, whichever comes first.

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
        if php_waiting and self.php is not None:
            await _first(self.queues.wait(wait), self.php.freed.wait())
        else:
            await self.queues.wait(wait)

    async def _or_stop(self, aw: Awaitable[object]) -> None:
        """Await ``aw`` unless stop() comes first (then ``aw`` is cancelled)."""
        await _first(aw, self._stop.wait())

    def _start(self, job: Job) -> None:
        task = asyncio.create_task(self._process(job))
        self._tasks[task] = job
        self._php_jobs += self._in_php(job)
        self.metrics.in_flight.inc()
        task.add_done_callback(self._finished)

    def _in_php(self, job: Job) -> bool:
        return self.php is not None and job.name not in self.handlers and self.php.runs(job)

    def _finished(self, task: asyncio.Task[None]) -> None:
        job = self._tasks.pop(task, None)
        self._php_jobs -= job is not None and self._in_php(job)
        self.metrics.in_flight.dec()
        self._slot_free.set()
        if not task.cancelled() and task.exception() is not None:
            # A bug while settling: the job stays reserved and runs again once that expires.
            log.error("could not settle a job: %r", task.exception())

    async def _drain(self) -> None:
        """Give running jobs, then kept outcomes, the grace period; what is still running
        or unwritten then stays reserved and runs again after its reservation."""
        deadline = time.monotonic() + self.config.grace
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.grace)
            if pending:
                log.warning("%d jobs still running after grace; left reserved", len(pending))
                await cancel_and_wait(pending)
        while self._kept and time.monotonic() < deadline:
            try:
                await self._apply_kept()
            except STORE_ERRORS:
                await asyncio.sleep(STORE_RETRY)
        if self._kept:
            log.warning(
                "%d finished jobs could not be settled before exit; they stay reserved",
                len(self._kept),
            )

    async def _keep_reserved(self) -> None:
        """Push out the reservation of every job held here, running or finished with its
        fate kept, so none expires while this process lives (a dead one stops pushing)."""
        while True:
            await asyncio.sleep(self.config.keep_interval)
            held = [*self._tasks.values(), *(outcome.job for outcome in self._kept)]
            if self._unconfirmed is not None:
                held += self._unconfirmed[0]
            if held:
                with contextlib.suppress(*STORE_ERRORS):
                    await self.queues.extend(held, self.config.retry_after)

    # --- writing what happened ------------------------------------------------------------

    async def _conclude(self, outcome: Outcome) -> None:
        """Write the outcome now, or keep it, behind any kept before, for the fetcher."""
        if outcome.kind == "left reserved":
            return
        if not self._kept:
            try:
                await self._apply(outcome)
                return
            except STORE_ERRORS as exc:
                self._store_away(exc)
                outcome = replace(outcome, tried=True)
        self._kept.append(outcome)
        self.metrics.unsettled.set(len(self._kept))

    async def _apply(self, outcome: Outcome) -> None:
        """Write the outcome; with ``min_replicas``, it counts only once they confirmed it.

        Every write here is safe to make again (a job no longer reserved is left alone), so
        an outcome not confirmed is kept and written again: after a failover that lost it,
        that settles the job on the new primary, where this process still holds it.
        """
        job = outcome.job
        since = self._replicated.connects if self._replicated else 0
        if outcome.kind == "done":
            await self._settling.delete(job)
            counted = "done"
        elif outcome.kind == "failed":
            failures = self._settled_failures
            entry = await failures.record(job, outcome.exception, again=outcome.tried)
            counted = "failed"
            if entry.waiting:
                self._pending.set()
        else:
            await self._settling.release(job, max(0.0, outcome.due - time.time()))
            counted = "retried"
        if self._replicated is not None:
            acked = await self._replicated.acked(since)
            if acked is None or acked < self.config.min_replicas:
                self.metrics.unreplicated.inc()
                raise NotReplicated(acked or 0)
        self.metrics.jobs.labels(job.queue, counted).inc()
        self.tally.note(job.queue, counted)

    async def _apply_kept(self) -> None:
        """Write the kept outcomes in order; a store error stops it, keeping the rest."""
        while self._kept:
            try:
                await self._apply(self._kept[0])
            except STORE_ERRORS:
                self._kept[0] = replace(self._kept[0], tried=True)
                raise
            except Exception:
                log.exception("could not settle a job; it stays reserved")
            self._kept.popleft()
            self.metrics.unsettled.set(len(self._kept))

    def _store_away(self, error: BaseException) -> None:
        """One warning per outage, however many calls fail during it."""
        if self._away is not None:
            return
        if isinstance(error, NotReplicated):
            self._away = ("Redis's replicas", time.monotonic())
            log.warning(
                "Redis's replicas do not confirm job outcomes (%s of %d); finished jobs are"
                " kept in memory, written again until they do, and nothing new is taken",
                error.acked,
                self.config.min_replicas,
            )
            return
        store = "Redis" if isinstance(error, RedisError | OSError) else "MySQL"
        self._away = (store, time.monotonic())
        log.warning(
            "%s unreachable (%s); finished jobs are kept in memory and settled when it"
            " answers, and nothing new is taken until then",
            store,
            _cause(error),
        )

    def _store_back(self) -> None:
        if self._away is not None:
            store, since = self._away
            answers = "confirm job outcomes" if store == "Redis's replicas" else "answers"
            log.info("%s %s again after %.1f s", store, answers, time.monotonic() - since)
            self._away = None

    async def _write_pending(self) -> None:
        """Move failures waiting in Redis, this process's or a dead one's, to failed_jobs."""
        away: float | None = None  # since when MySQL has not answered
        while True:
            self._pending.clear()
            try:
                written = await self.failed.write_pending()
            except RedisError:
                pass  # Redis away: the fetcher says so
            except MYSQL_ERRORS as exc:
                if away is None:
                    away = time.monotonic()
                    log.warning(
                        "MySQL unreachable (%s); failed jobs wait in Redis (queues:failed-pending)"
                        " and are written to failed_jobs when it answers; jobs keep running",
                        _cause(exc),
                    )
                await self._show_pending()
                await asyncio.sleep(PENDING_RETRY)
                continue
            except Exception:
                log.exception("could not write the failed jobs waiting for MySQL")
            else:
                if away is not None:
                    log.info(
                        "MySQL answers again after %.1f s; %d waiting failed jobs written",
                        time.monotonic() - away,
                        written,
                    )
                    away = None
            await self._show_pending()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._pending.wait(), PENDING_INTERVAL)

    async def _show_pending(self) -> None:
        with contextlib.suppress(RedisError, OSError):
            self.metrics.waiting_for_database.set(await self.failed.waiting())

    async def _publish_tally(self) -> None:
        while True:
            await asyncio.sleep(TALLY_INTERVAL)
            with contextlib.suppress(RedisError, OSError):
                await self.tally.flush(self.redis, time.time())

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
            outcome = await self._failure(job, refusal, refusal)
        else:
            timeout = timeout_for(job.payload or {}, self.config.policy)
            async with self._handler(job) as handler:
                error, timed_out = await self._call(handler, job, timeout)
            outcome = await self._judge(job, error, timed_out)
        await self._conclude(outcome)
        outcomes.info(
            "%s on %s: %s",
            job.name or "?",
            job.queue,
            outcome.kind,
            extra={
                "fields": {
                    "queue": job.queue,
                    "job": job.name or "?",
                    "attempt": job.attempts,
                    "outcome": outcome.kind,
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

    async def _judge(self, job: Job, error: Exception | None, timed_out: bool) -> Outcome:
        """Done, released for a retry, or failed; only once that is written does the
        reservation go."""
        if timed_out:
            self.metrics.jobs.labels(job.queue, "timed_out").inc()
        now = time.time()
        if error is None:
            return Outcome(job, "done")
        if isinstance(error, Released):  # Laravel released the PHP job
            log.info(
                "%s on %s attempt %d: %s; again in %g s",
                job.name,
                job.queue,
                job.attempts,
                error.summary,
                error.delay,
            )
            return Outcome(job, "released", due=now + error.delay)
        if isinstance(error, RunnerLost):  # outcome unknown: it runs again after its reservation
            log.warning("%s on %s left reserved: %s", job.name, job.queue, error)
            return Outcome(job, "left reserved")
        if isinstance(error, RunnerFailed):  # Laravel failed it, failed() hook and all
            return await self._failure(job, str(error), summary(error), hook=False)
        text = "".join(traceback.format_exception(error)).rstrip()
        if isinstance(error, PermanentError):
            return await self._failure(job, text, summary(error))
        decision = after_error(
            job.payload or {},
            job.attempts,
            self.config.policy,
            now,
            timed_out=timed_out,
            unknown=isinstance(error, UnknownOutcome),
            retry_unknown=job.queue in self.config.retry_unknown_queues,
            wait=error.retry_after if isinstance(error, HandlerFailure) else None,
        )
        if isinstance(decision, Fail):
            why = f"{summary(error)} ({decision.reason})"
            return await self._failure(job, f"{text}\n({decision.reason})", why)
        log.info(
            "%s on %s attempt %d: %s; again in %g s",
            job.name,
            job.queue,
            job.attempts,
            summary(error),
            decision.delay,
        )
        log.debug("%s attempt %d: %s", job.name, job.attempts, error)
        return Outcome(job, "retried", due=now + decision.delay)

    async def _failure(self, job: Job, exception: str, why: str, *, hook: bool = True) -> Outcome:
        """A failure to record; the log says only ``why``, which holds no personal data."""
        if hook and self.php and self.php.runs(job) and job.payload is not None:
            # As Laravel fails a job itself: the job's failed() hook runs, and the store
            # keeps PHP's exception.
            exception = await self.php.fail(job) or exception
        log.warning("failed %s on %s: %s", job.name or "?", job.queue, why)
        return Outcome(job, "failed", exception=exception)

    async def _call(
        self, handler: Handler, job: Job, timeout: float | None
    ) -> tuple[Exception | None, bool]:
        """Run the handler under its timeout; returns (its exception, whether it timed out)."""
        assert self._http is not None
        context = JobContext(
            job, self._http, self.redis, self.config.gateway_url, self.config.api_token
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
        return None, False


async def _first(*aws: Awaitable[object]) -> None:
    """Await whichever of ``aws`` finishes first; the others are cancelled."""
    tasks = [asyncio.ensure_future(aw) for aw in aws]
    await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _cause(error: BaseException) -> str:
    """The error's type and first line, short enough for one log line."""
    cause = str(error).splitlines()[0][:200] if str(error) else ""
    return f"{type(error).__name__}: {cause}" if cause else type(error).__name__
