"""The upstream: forwarding a request to one instance over its own keep-alive pool.

Bodies pass through as bytes (no re-encoding, no decompression), and the path goes out
exactly as the gateway parsed it, after the instance's own path prefix. Failures are
sorted by whether the request can have reached the instance, because that decides whether
it may be sent again elsewhere: a connection that could not be made (refused, timed out,
no DNS name, bad TLS) reached nothing; anything after the request went out may have been
acted on. The wire work is the pool's (``upstream.pool``); this module turns calls into
request bytes and answers into ``Reply``.
"""

from __future__ import annotations

import asyncio
import re
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

from gateway.metrics import GatewayMetrics
from gateway.shared.settings import Settings
from gateway.upstream.pool import NOT_SENT, ConnectionPool, Failure, Reply

__all__ = ["Reply", "UpstreamError", "Upstreams"]

BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# What may follow the method in a request line: printable ASCII, no space.
TARGET = re.compile(r"/[!-~]*")
CHECK_CONNECTIONS = 2  # per instance, for health checks alone, besides the capped pool


class UpstreamError(Exception):
    """A call to an instance that got no answer.

    ``sent`` is False only when the request surely never reached the instance; then it
    may go elsewhere whatever it was. ``kind`` is one of ``refused``, ``connect_timeout``,
    ``dns``, ``tls`` (not sent) or ``timeout``, ``reset``, ``bad_response`` (sent).
    """

    def __init__(self, url: str, kind: str, detail: str) -> None:
        super().__init__(f"{url}: {kind} ({detail})")
        self.url, self.kind, self.detail = url, kind, detail
        self.sent = kind not in NOT_SENT


@dataclass(frozen=True)
class InstanceClient:
    """Where one configured instance URL sends its requests."""

    pool: ConnectionPool
    checks: ConnectionPool  # the health checks' own: they never wait behind proxied calls
    prefix: str  # the URL's own path, put before every forwarded path
    host: bytes  # the Host header line


def _instance(url: str, pool_options: dict[str, Any]) -> InstanceClient:
    parts = urlsplit(url)
    tls = ssl.create_default_context() if parts.scheme == "https" else None
    port = parts.port or (443 if tls else 80)
    host = parts.hostname or "localhost"
    pool = ConnectionPool(host, port, tls=tls, **pool_options)
    checks = ConnectionPool(
        host, port, tls=tls, **{**pool_options, "limit": CHECK_CONNECTIONS, "on_wait": None}
    )
    netloc = parts.netloc.rpartition("@")[2]
    return InstanceClient(
        pool, checks, parts.path.rstrip("/"), b"Host: " + netloc.encode("idna") + b"\r\n"
    )


class Upstreams:
    """One keep-alive pool per instance, capped, with short-lived idle connections."""

    def __init__(
        self,
        urls: tuple[str, ...],
        *,
        connect_timeout: float,
        read_timeout: float,
        keepalive: float,
        max_connections: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.metrics = metrics
        self.read_timeout = read_timeout
        self.loop = asyncio.get_running_loop()
        self.instances = {
            url: _instance(
                url,
                {
                    "limit": max_connections,
                    "keepalive": keepalive,
                    "connect_timeout": connect_timeout,
                    "on_wait": metrics.pool_wait.labels(url).observe,
                },
            )
            for url in urls
        }

    @classmethod
    def for_settings(cls, s: Settings, metrics: GatewayMetrics) -> Upstreams:
        """The pools of the configured instances (the gateway's, and ``sync-db``'s)."""
        return cls(
            s.instances,
            connect_timeout=s.connect_timeout,
            read_timeout=s.read_timeout,
            keepalive=s.upstream_keepalive,
            max_connections=s.max_connections_per_instance,
            metrics=metrics,
        )

    async def close(self) -> None:
        pools = [pool for i in self.instances.values() for pool in (i.pool, i.checks)]
        await asyncio.gather(*(pool.close() for pool in pools))

    async def send(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: bytes = b"",
        body: bytes = b"",
        timeout: float | None = None,
        check: bool = False,
    ) -> Reply:
        """Send one request to ``url`` (its prefix + ``path_qs``) and read the whole answer.

        ``headers`` are header lines, each ending in CRLF (``Host`` and ``Content-Length``
        are the upstream's own). ``timeout`` bounds the whole call (default
        ``read_timeout``): the wait for a connection, connecting, writing and reading.
        ``check``: a health check, sent on the instance's connections kept for them.
        """
        instance = self.instances[url]
        if not TARGET.fullmatch(path_qs):
            raise ValueError(f"not a request target: {path_qs!r}")
        length = b"Content-Length: %d\r\n" % len(body) if body or method in BODY_METHODS else b""
        request = b"".join(
            (
                f"{method} {instance.prefix}{path_qs} HTTP/1.1\r\n".encode("ascii"),
                instance.host,
                headers,
                length,
                b"\r\n",
                body,
            )
        )
        deadline = self.loop.time() + (timeout if timeout is not None else self.read_timeout)
        try:
            pool = instance.checks if check else instance.pool
            answer = await pool.send(request, method.encode("ascii"), deadline)
        except Failure as exc:
            self.metrics.upstream_errors.labels(url, exc.kind).inc()
            raise UpstreamError(url, exc.kind, exc.detail) from None
        return answer

    async def get_json(
        self,
        url: str,
        path: str,
        params: Mapping[str, str],
        timeout: float,
        check: bool = False,
    ) -> tuple[int, Any]:
        """A gateway-initiated GET (health, status, lists): status and decoded body."""
        path_qs = f"{path}?{urlencode(params)}" if params else path
        reply = await self.send(url, "GET", path_qs, timeout=timeout, check=check)
        return reply.status, reply.json()
