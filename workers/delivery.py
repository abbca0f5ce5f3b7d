"""Webhook delivery: the outbox's events to the backend, in order per session, at least once.

Each event goes to ``POST {LARAVEL_URL}{its original path}`` with its body unchanged, signed
afresh with the shared secret, with the headers the gateway kept for it (``X-Instance-Url``
as the backend is to see it, by default the gateway's own URL, the instance in
``X-WhatsApp-Instance``, the instance's ``X-Forwarded-For`` and ``User-Agent``) and an
``X-Webhook-Id`` that stays the same on every attempt, so the backend can drop a repeat.
A 2xx answer is done. 408, 429, 5xx, a refused connection or a timeout is tried again, 1 s
after the first failure and twice as long after each next one, up to ``webhook_backoff_cap`` (a
``Retry-After`` wins), for up to ``webhook_max_age`` since the event was received; then it
is dead-lettered. Any other answer is dead-lettered at once, with the backend's words.

The head of a lane is leased for twice the delivery timeout. A worker killed mid-delivery
leaves only the events it was sending to go out again, once their leases run out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError
from yarl import URL

from gateway.shared.outbox import Delivery, Outbox
from gateway.shared.settings import Settings
from gateway.shared.signature import INSTANCE_URL_HEADER, signed_headers
from gateway.shared.tasks import cancel_and_wait
from workers.handlers import Verdict, retry_after_seconds, webhook_verdict
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings

log = logging.getLogger("workers.delivery")

WEBHOOK_ID_HEADER = "X-Webhook-Id"
MAX_ERROR = 2000  # characters of the backend's answer kept with a dead letter


@dataclass(frozen=True, slots=True)
class RelayConfig:
    laravel_url: str
    secret: str
    key_prefix: str
    concurrency: int = 10
    timeout: float = 30.0
    max_age: float = 86400.0
    backoff_base: float = 1.0
    backoff_cap: float = 300.0
    idle_wait: float = 1.0  # longest sleep without a wake-up, in case one was missed
    depth_interval: float = 5.0

    @property
    def lease(self) -> float:
        """How long a lane's head is held by the worker sending it."""
        return 2 * self.timeout

    @classmethod
    def build(cls, settings: Settings, w: WorkerSettings) -> RelayConfig | None:
        """The delivery settings; ``None`` when webhooks are not delivered (say why)."""
        if not settings.hmac_secret:
            return None
        if not w.laravel_url:
            log.warning("LARAVEL_URL is not set: webhook events are kept but not delivered")
            return None
        return cls(
            laravel_url=w.laravel_url.rstrip("/"),
            secret=settings.hmac_secret,
            key_prefix=settings.key_prefix,
            concurrency=w.webhook_concurrency,
            timeout=w.webhook_timeout,
            max_age=w.webhook_max_age,
            backoff_base=w.webhook_backoff_base,
            backoff_cap=w.webhook_backoff_cap,
        )


# --- decisions: pure ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Done:
    pass


@dataclass(frozen=True, slots=True)
class Retry:
    due: float  # unix time of the next attempt


@dataclass(frozen=True, slots=True)
class Dead:
    reason: str


def backoff(attempts: int, base: float, cap: float) -> float:
    """``base`` after the first failed attempt, doubling after each next one, at most ``cap``."""
    return min(cap, base * 2 ** min(max(attempts, 1) - 1, 64))


def decide(
    status: int | None,
    retry_after: float | None,
    d: Delivery,
    config: RelayConfig,
    now: float,
) -> Done | Retry | Dead:
    """What an attempt's outcome means; ``status`` is None when no answer came."""
    verdict = Verdict.RETRY if status is None else webhook_verdict(status, None)
    if verdict is Verdict.DONE:
        return Done()
    if verdict is not Verdict.RETRY:
        return Dead(f"the backend answered {status}, which another try would not change")
    deadline = d.since + config.max_age
    if now >= deadline:
        return Dead(f"still failing {config.max_age:g} s after it was received")
    if retry_after is None:
        retry_after = backoff(d.attempts, config.backoff_base, config.backoff_cap)
    return Retry(min(now + retry_after, deadline))


# --- the relay -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Attempt:
    """What one POST gave: the status (None: no answer), the words to keep, Retry-After."""

    status: int | None
    error: str
    retry_after: float | None = None


class WebhookRelay:
    """Takes due lanes from the outbox and delivers their heads, ``concurrency`` at a time."""

    def __init__(self, config: RelayConfig, redis: aioredis.Redis, metrics: WorkerMetrics) -> None:
        self.config = config
        self.redis = redis
        self.outbox = Outbox(redis, config.key_prefix)
        self.metrics = metrics
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None

    def stop(self) -> None:
        """Take nothing new; :meth:`run` returns once the deliveries in flight ended."""
        self._stop.set()
        self._wake.set()

    async def run(self) -> None:
        log.info("delivering webhooks to %s", self.config.laravel_url)
        timeout = aiohttp.ClientTimeout(total=self.config.timeout)
        async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as http:
            self._http = http
            helpers = [asyncio.create_task(self._listen()), asyncio.create_task(self._watch())]
            try:
                await self._fetch()
                await self._drain()
            finally:
                await cancel_and_wait(helpers)

    # --- taking lanes ----------------------------------------------------------------------

    async def _fetch(self) -> None:
        adopted = False  # an earlier version's outbox keys were moved over
        while not self._stop.is_set():
            self._wake.clear()
            wait = self.config.idle_wait
            free = self.config.concurrency - len(self._tasks)
            if free > 0:
                try:
                    if not adopted:
                        await self.outbox.adopt_old_keys()
                        adopted = True
                    taken, next_due = await self.outbox.take(free, self.config.lease, time.time())
                except Exception:
                    log.exception("could not take webhook events; trying again in 1 s")
                    await self._sleep(1.0)
                    continue
                for delivery in taken:
                    self._start(delivery)
                if next_due is not None:
                    wait = min(wait, max(0.0, next_due - time.time()))
            await self._sleep(wait)

    async def _sleep(self, seconds: float) -> None:
        """Until ``seconds`` pass, a slot frees, a new event is published, or stop()."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._wake.wait()

    async def _listen(self) -> None:
        """Wake the fetcher as soon as the gateway publishes a new event."""
        while True:
            pubsub = self.redis.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.outbox.keys.wake)
                async for _ in pubsub.listen():
                    self._wake.set()
            except (RedisError, OSError):
                await asyncio.sleep(1.0)  # the idle wait keeps deliveries going meanwhile
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()

    async def _watch(self) -> None:
        while True:
            with contextlib.suppress(RedisError, OSError):
                self.metrics.observe_webhooks(await self.outbox.backlog(time.time()))
            await asyncio.sleep(self.config.depth_interval)

    def _start(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._deliver(delivery))
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._wake.set()
        if not task.cancelled() and task.exception() is not None:
            # Redis went away while settling: the lease runs out and the event goes again.
            log.error("could not settle a webhook event: %r", task.exception())

    async def _drain(self) -> None:
        """Let deliveries in flight end; one cut short goes out again after its lease."""
        if self._tasks:
            _, pending = await asyncio.wait(set(self._tasks), timeout=self.config.timeout)
            await cancel_and_wait(pending)

    # --- one delivery ----------------------------------------------------------------------

    async def _deliver(self, d: Delivery) -> None:
        attempt = await self._post(d)
        now = time.time()
        decision = decide(attempt.status, attempt.retry_after, d, self.config, now)
        if isinstance(decision, Done):
            if await self.outbox.delivered(d, now):
                self.metrics.webhooks.labels("delivered").inc()
                self.metrics.webhook_lag.observe(max(0.0, now - d.received))
        elif isinstance(decision, Retry):
            log.info(
                "webhook %s attempt %d failed (%s); next in %.1f s",
                d.id,
                d.attempts,
                attempt.error.splitlines()[0][:200],
                decision.due - now,
            )
            if await self.outbox.retry(d, now, decision.due, attempt.error):
                self.metrics.webhooks.labels("retried").inc()
        else:
            log.warning("webhook %s dead-lettered: %s", d.id, decision.reason)
            status = "" if attempt.status is None else str(attempt.status)
            error = f"{attempt.error}\n({decision.reason})"
            if await self.outbox.dead(d, now, status, error):
                self.metrics.webhooks.labels("dead_lettered").inc()

    async def _post(self, d: Delivery) -> Attempt:
        assert self._http is not None
        headers = {
            "Content-Type": d.content_type or "application/json",
            **signed_headers(self.config.secret, d.body, time.time()),
            WEBHOOK_ID_HEADER: d.id,
        }
        if d.headers:
            # As the gateway kept them: X-Instance-Url as the backend is to see it, the
            # instance behind it, and the instance's address and User-Agent.
            headers.update(d.headers)
        elif d.instance:
            headers[INSTANCE_URL_HEADER] = d.instance
        url = URL(self.config.laravel_url + d.path, encoded=True)
        try:
            async with self._http.post(
                url, data=d.body, headers=headers, allow_redirects=False
            ) as resp:
                text = (await resp.read()).decode("utf-8", "replace")
                retry_after = retry_after_seconds(resp.headers.get("Retry-After"), time.time())
                return Attempt(resp.status, f"{resp.status} {text}"[:MAX_ERROR], retry_after)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            kind = "timeout" if isinstance(exc, TimeoutError) else type(exc).__name__
            return Attempt(None, f"{kind}: {exc}"[:MAX_ERROR])
