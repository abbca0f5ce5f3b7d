"""The upstream: forwarding a request to one instance over its own keep-alive pool.

Bodies pass through as bytes (no re-encoding, no decompression), and the path goes out
exactly as the gateway parsed it, after the instance's own path prefix. Failures are
sorted by whether the request can have reached the instance, because that decides whether
it may be sent again elsewhere: a connection that could not be made (refused, timed out,
no DNS name, bad TLS) reached nothing; anything after the request went out may have been
acted on.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from gateway.metrics import Metrics
from gateway.settings import Settings

# Failures in which the request surely never left the gateway.
NOT_SENT_KINDS = frozenset({"refused", "connect_timeout", "dns", "tls"})


class UpstreamError(Exception):
    """A call to an instance that got no answer.

    ``sent`` is False only when the request surely never reached the instance; then it
    may go elsewhere whatever it was. ``kind`` is one of ``refused``, ``connect_timeout``,
    ``dns``, ``tls`` (not sent) or ``timeout``, ``reset``, ``bad_response`` (sent).
    """

    def __init__(self, url: str, kind: str, detail: str) -> None:
        super().__init__(f"{url}: {kind} ({detail})")
        self.url, self.kind, self.detail = url, kind, detail
        self.sent = kind not in NOT_SENT_KINDS


@dataclass(frozen=True)
class Reply:
    status: int
    headers: CIMultiDictProxy[str]
    body: bytes

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    @property
    def session_not_found(self) -> bool:
        """The instance's way of saying it does not hold the session (nothing was done)."""
        if self.status != 404:
            return False
        body = self.json()
        return isinstance(body, dict) and body.get("error") == "Session not found"


@dataclass
class Attempt:
    """What one try did on the wire, as aiohttp's trace signals tell it."""

    reused: bool = False  # it went over a pooled connection
    started: bool = False  # the request began to be written: it may have reached the instance
    queued: float = 0.0  # when it began to wait for a free connection


def _tracing(metrics: Metrics, url: str) -> aiohttp.TraceConfig:
    trace = aiohttp.TraceConfig()

    def attempt(ctx: SimpleNamespace) -> Attempt:
        found: Attempt = ctx.trace_request_ctx
        return found

    async def reused(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        attempt(ctx).reused = True

    async def started(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        attempt(ctx).started = True

    async def queued(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        attempt(ctx).queued = time.monotonic()

    async def dequeued(_: Any, ctx: SimpleNamespace, __: Any) -> None:
        waited = time.monotonic() - attempt(ctx).queued
        metrics.pool_wait.labels(url).observe(waited)

    trace.on_connection_reuseconn.append(reused)
    trace.on_request_headers_sent.append(started)
    trace.on_connection_queued_start.append(queued)
    trace.on_connection_queued_end.append(dequeued)
    return trace


def _kind(exc: BaseException, attempt: Attempt) -> str:
    """The failure's kind; connection-time failures are the ones that sent nothing."""
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        return "dns"
    if isinstance(exc, aiohttp.ClientSSLError | aiohttp.ServerFingerprintMismatch):
        return "tls"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "refused"
    if isinstance(exc, TimeoutError):
        # Before the request began to go out, the time went on the pool or the connect.
        started = attempt.started and not isinstance(exc, aiohttp.ConnectionTimeoutError)
        return "timeout" if started else "connect_timeout"
    if isinstance(exc, aiohttp.ServerDisconnectedError | aiohttp.ClientOSError):
        return "reset"
    return "bad_response"


class _Stale(Exception):
    """The try met a stale pooled connection; nothing was written."""


# A body this small goes out with its headers in one write that never waits for the socket
# to drain (aiohttp's transports pause writing at 64 KiB).
ONE_WRITE = 32 * 1024


def _stale(exc: BaseException, attempt: Attempt, body: bytes | None) -> bool:
    """A pooled connection the instance had already closed when the request was written.

    aiohttp raises ``ClientConnectionResetError`` when the transport is found closing at
    the write: the request did not go out, so it may be sent again on a fresh connection.
    A larger body may wait for the socket to drain, and lose the connection after part of
    it went out; that is not retried.
    """
    return (
        attempt.reused
        and isinstance(exc, aiohttp.ClientConnectionResetError)
        and len(body or b"") <= ONE_WRITE
    )


class Upstreams:
    """One pooled HTTP client per instance, capped, with short-lived idle connections."""

    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float,
        max_connections: int,
        metrics: Metrics,
    ) -> None:
        self.metrics = metrics
        self.connect_timeout = connect_timeout
        self.timeout = aiohttp.ClientTimeout(total=read_timeout, sock_connect=connect_timeout)
        self.clients = {
            url: aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=max_connections, keepalive_timeout=keepalive, ttl_dns_cache=300
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
                trace_configs=[_tracing(metrics, url)],
            )
            for url in urls
        }

    @classmethod
    def for_settings(cls, s: Settings, metrics: Metrics) -> Upstreams:
        """The clients of the configured instances (the gateway's, and ``sync-db``'s)."""
        return cls(
            s.instances,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            keepalive=s.upstream_keepalive,
            max_connections=s.max_connections_per_instance,
            metrics=metrics,
        )

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    async def send(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: float | None = None,
    ) -> Reply:
        """Send one request to ``url`` (the instance's base URL + ``path_qs``) and read it all.

        ``timeout`` bounds the whole call (default ``read_timeout``).

        A request that met a stale pooled connection before it was written goes once more
        on a fresh one; reads cut after they went out are retried by aiohttp itself.
        """
        target = URL(url + path_qs, encoded=True)
        limit = self.timeout
        if timeout is not None:
            limit = aiohttp.ClientTimeout(
                total=timeout, sock_connect=min(timeout, self.connect_timeout)
            )
        try:
            return await self._once(url, method, target, headers, body, limit, first=True)
        except _Stale:
            return await self._once(url, method, target, headers, body, limit, first=False)

    async def _once(
        self,
        url: str,
        method: str,
        target: URL,
        headers: Mapping[str, str] | None,
        body: bytes | None,
        timeout: aiohttp.ClientTimeout,
        *,
        first: bool,
    ) -> Reply:
        attempt = Attempt()
        try:
            async with self.clients[url].request(
                method,
                target,
                headers=headers,
                data=body,
                timeout=timeout,
                allow_redirects=False,
                trace_request_ctx=attempt,
            ) as resp:
                return Reply(resp.status, resp.headers, await resp.read())
        except (aiohttp.ClientError, TimeoutError) as exc:
            if first and _stale(exc, attempt, body):
                raise _Stale from None
            kind = _kind(exc, attempt)
            self.metrics.upstream_errors.labels(url, kind).inc()
            raise UpstreamError(url, kind, str(exc) or type(exc).__name__) from None

    async def get_json(
        self, url: str, path: str, params: Mapping[str, str], timeout: float
    ) -> tuple[int, Any]:
        """A gateway-initiated GET (health, status, lists): status and decoded body."""
        path_qs = f"{path}?{urlencode(params)}" if params else path
        reply = await self.send(url, "GET", path_qs, timeout=timeout)
        return reply.status, reply.json()
