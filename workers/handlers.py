"""Job handlers: the built-in HTTP senders and the registry by job name.

A handler is ``async def handler(job: JobContext) -> None``. Returning means done; raising
:class:`PermanentError` fails the job at once; any other exception (or the timeout) retries
it while tries remain. More handlers are registered by dotted path in the settings
(``[workers.handlers] "campaign.stats" = "package.module:function"``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
import redis.asyncio as aioredis

from workers.jobs import Job


class PermanentError(Exception):
    """The job can never succeed (e.g. the gateway answered 400): fail it without retrying."""


class RetryableError(Exception):
    """A failure that may pass on another try (e.g. the gateway answered 503)."""


class HandlerError(ValueError):
    """A handler named in the settings cannot be loaded; the message is one line."""


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler gets: the job plus the pool's shared clients."""

    job: Job
    http: aiohttp.ClientSession
    redis: aioredis.Redis
    gateway_url: str
    api_token: str

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


Handler = Callable[[JobContext], Awaitable[None]]


def retryable_status(status: int) -> bool:
    """408, 429 and 5xx are worth another try; other non-2xx answers will not change."""
    return status in (408, 429) or status >= 500


async def post_json(
    http: aiohttp.ClientSession, url: str, body: Any, headers: Mapping[str, str] | None = None
) -> None:
    """POST ``body`` as JSON; 2xx returns, anything else raises by :func:`retryable_status`."""
    async with http.post(url, json=body, headers=dict(headers or {})) as resp:
        if 200 <= resp.status < 300:
            return
        text = (await resp.text(errors="replace"))[:300]
        message = f"POST {url} answered {resp.status}: {text}"
    if retryable_status(resp.status):
        raise RetryableError(message)
    raise PermanentError(message)


def gateway_post(path: str) -> Handler:
    """A handler that POSTs the job's ``data`` to the gateway at ``path``, with the api key."""

    async def handler(job: JobContext) -> None:
        body = dict(job.data)
        if job.api_token:
            body.setdefault("api_key", job.api_token)
        await post_json(job.http, f"{job.gateway_url}{path}", body)

    handler.__name__ = handler.__qualname__ = f"post_{path.rsplit('/', 1)[-1]}"
    return handler


async def http_post(job: JobContext) -> None:
    """Webhook-style POST: ``data`` is ``{"url": ..., "body": ..., "headers": {...}}``."""
    url = job.data.get("url")
    headers = job.data.get("headers") or {}
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise PermanentError(f"http.post needs data.url as an http(s) URL, got {url!r}")
    if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
        raise PermanentError("http.post needs data.headers as an object of strings")
    await post_json(job.http, url, job.data.get("body", {}), headers)


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
