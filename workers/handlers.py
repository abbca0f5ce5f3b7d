"""Job handlers: the built-in HTTP senders and the registry by job name.

A handler is ``async def handler(job: JobContext) -> None``. Returning means done; raising
:class:`PermanentError` fails the job at once; :class:`UnknownOutcome` fails it too unless
the job or its queue asks for retries of unknown outcomes (a message may already be out);
any other exception (or the timeout) retries it while tries remain. More handlers are
registered by dotted path in the settings
(``[workers.handlers] "campaign.stats" = "package.module:function"``).
"""

from __future__ import annotations

import email.utils
import enum
import importlib
import inspect
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis

from gateway.shared.laravel.jobs import Job


class HandlerFailure(Exception):
    """A failure a handler explains. ``str()`` is the whole story, kept with a failed job;
    ``summary`` is what an INFO log may show: no answer body, no query string."""

    def __init__(
        self, detail: str, *, summary: str | None = None, retry_after: float | None = None
    ) -> None:
        super().__init__(detail)
        self.summary = summary or type(self).__name__
        self.retry_after = retry_after  # seconds the other side asked us to wait, if any


class PermanentError(HandlerFailure):
    """The job can never succeed (e.g. the gateway answered 400): fail it without retrying."""


class RetryableError(HandlerFailure):
    """A failure that may pass on another try (e.g. the gateway answered 503 not-sent)."""


class UnknownOutcome(HandlerFailure):
    """The request may have been acted on (a 504, a reset after it was written, an
    instance's own 5xx): another try could send the same message twice."""


class HandlerError(ValueError):
    """A handler named in the settings cannot be loaded; the message is one line."""


@dataclass(slots=True)
class Progress:
    """What an attempt got to, for the pool to judge a timeout: once a request that acts
    (a send) may have been written, running out of time is an unknown outcome."""

    maybe_sent: bool = False
    sends: int = 0  # requests keyed so far in this attempt


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler gets: the job plus the pool's shared clients."""

    job: Job
    http: aiohttp.ClientSession
    redis: aioredis.Redis
    gateway_url: str
    api_token: str
    progress: Progress = field(default_factory=Progress)

    @property
    def data(self) -> dict[str, Any]:
        return self.job.data

    @property
    def attempt(self) -> int:
        return self.job.attempts

    @property
    def queue(self) -> str:
        return self.job.queue

    @property
    def name(self) -> str:
        return self.job.name

    @property
    def payload(self) -> dict[str, Any]:
        return self.job.payload or {}

    def send_key(self) -> str:
        """The ``Idempotency-Key`` of the attempt's next request that acts: the same, request
        for request, on every attempt, so the gateway sends each at most once."""
        self.progress.sends += 1
        return self.job.send_key(self.progress.sends)


Handler = Callable[[JobContext], Awaitable[None]]

OUTCOME_HEADER = "X-Gateway-Outcome"  # the gateway's word on its own 502/503/504
IDEMPOTENCY_HEADER = "Idempotency-Key"


class Verdict(enum.Enum):
    DONE = "done"
    RETRY = "retry"  # provably not acted on, or a plain retryable answer
    UNKNOWN = "unknown"  # may have been acted on
    FAIL = "fail"


def send_verdict(status: int, outcome: str | None) -> Verdict:
    """How a message send's answer is taken: retried only when nothing was sent.

    The gateway marks its own failures ``not-sent`` or ``unknown``; an answer without the
    mark came from an instance, which had the request: its 5xx may follow a send, except
    503 (unavailable, it did not act). 408 and 429 are refusals before any work.
    """
    if 200 <= status < 300:
        return Verdict.DONE
    if outcome == "not-sent":
        return Verdict.RETRY
    if outcome == "unknown":
        return Verdict.UNKNOWN
    if status in (408, 429, 503):
        return Verdict.RETRY
    return Verdict.UNKNOWN if status >= 500 else Verdict.FAIL


def webhook_verdict(status: int, outcome: str | None) -> Verdict:
    """A webhook is delivered at least once: 408, 429 and 5xx are tried again."""
    if 200 <= status < 300:
        return Verdict.DONE
    return Verdict.RETRY if status in (408, 429) or status >= 500 else Verdict.FAIL


def retry_after_seconds(value: str | None, now: float) -> float | None:
    """``Retry-After`` as seconds from now: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        return None
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True, slots=True)
class Rules:
    """How a POST's result is judged: its answer by ``verdict``; a failure after the request
    was written (a reset, a read timeout) as ``after_write`` (retry or unknown)."""

    verdict: Callable[[int, str | None], Verdict]
    after_write: Verdict


SEND = Rules(send_verdict, Verdict.UNKNOWN)  # a message: never twice
WEBHOOK = Rules(webhook_verdict, Verdict.RETRY)  # a webhook: at least once

_ERRORS: Mapping[Verdict, type[HandlerFailure]] = {
    Verdict.RETRY: RetryableError,
    Verdict.UNKNOWN: UnknownOutcome,
    Verdict.FAIL: PermanentError,
}


def _where(url: str) -> str:
    """The URL without its query string or fragment, for messages."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"


async def post_json(
    http: aiohttp.ClientSession,
    url: str,
    body: Any,
    headers: Mapping[str, str],
    rules: Rules,
    progress: Progress,
) -> None:
    """POST ``body`` as JSON; returns on 2xx, else raises what ``rules`` make of it.

    A failure to connect never reached the other side and is retried; any other transport
    failure came after the request was (maybe) written.
    """
    where = f"POST {_where(url)}"
    progress.maybe_sent = rules.after_write is Verdict.UNKNOWN
    try:
        async with http.post(url, json=body, headers=dict(headers)) as resp:
            status, outcome = resp.status, resp.headers.get(OUTCOME_HEADER)
            if 200 <= status < 300:
                return
            wait = retry_after_seconds(resp.headers.get("Retry-After"), time.time())
            try:
                text = (await resp.text(errors="replace"))[:300]
            except (aiohttp.ClientError, TimeoutError):
                text = "(the answer's body could not be read)"
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise RetryableError(
            f"{where}: not sent, could not connect ({exc})", summary=f"{where}: could not connect"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as exc:
        kind = type(exc).__name__
        raise _ERRORS[rules.after_write](
            f"{where}: {kind} after the request was written ({exc})", summary=f"{where}: {kind}"
        ) from None
    mark = f" ({OUTCOME_HEADER}: {outcome})" if outcome else ""
    summary = f"{where} answered {status}{mark}"
    error = _ERRORS[rules.verdict(status, outcome)]
    raise error(f"{summary}: {text}", summary=summary, retry_after=wait)


def gateway_post(path: str) -> Handler:
    """A handler that sends the job's ``data`` to the gateway at ``path``, with the api key.

    Every attempt carries the same ``Idempotency-Key`` (the job's key and the request's
    number in the attempt): a repeat after a kill, a timeout or a cut grace is answered from
    what the gateway kept, or refused 409 (an unknown outcome), never sent again.
    """

    async def handler(job: JobContext) -> None:
        body = dict(job.data)
        if job.api_token:
            body.setdefault("api_key", job.api_token)
        headers = {IDEMPOTENCY_HEADER: job.send_key()}
        url = f"{job.gateway_url}{path}"
        await post_json(job.http, url, body, headers, SEND, job.progress)

    handler.__name__ = handler.__qualname__ = f"post_{path.rsplit('/', 1)[-1]}"
    return handler


async def http_post(job: JobContext) -> None:
    """Webhook-style POST: ``data`` is ``{"url": ..., "body": ..., "headers": {...}}``."""
    url = job.data.get("url")
    headers = job.data.get("headers") or {}
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PermanentError("http.post needs data.url as an http(s) URL")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise PermanentError("http.post needs data.headers as an object of strings")
    body = job.data.get("body", {})
    await post_json(job.http, url, body, headers, WEBHOOK, job.progress)


BUILTIN: Mapping[str, Handler] = {
    "whatsapp.send_message": gateway_post("/api/messages/send"),
    "whatsapp.send_media": gateway_post("/api/messages/send-media"),
    "whatsapp.bulk_send": gateway_post("/api/messages/bulk-send"),
    "http.post": http_post,
}


def resolve(target: str) -> Handler:
    """Import ``package.module:function`` and check it is an ``async def``."""
    module_name, _, attr = target.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError, ValueError) as exc:
        raise HandlerError(f"handler {target!r} cannot be loaded ({exc})") from None
    if not inspect.iscoroutinefunction(func):
        raise HandlerError(f"handler {target!r} is not an async function")
    return func


def registry(extra: Mapping[str, str]) -> dict[str, Handler]:
    """Built-ins plus the configured handlers (which may replace a built-in)."""
    return {**BUILTIN, **{name: resolve(target) for name, target in extra.items()}}


def summary(error: BaseException) -> str:
    """What an INFO log may say about a handler's error (its message may hold personal data)."""
    return error.summary if isinstance(error, HandlerFailure) else type(error).__name__
