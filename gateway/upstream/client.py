"""The upstream: forwarding a request to one instance over its own keep-alive pool.

Bodies pass through as bytes (no re-encoding, no decompression). Failures are sorted by
whether the instance may have acted, because that decides whether a request may be sent
again elsewhere.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

import aiohttp
from multidict import CIMultiDictProxy

from gateway.metrics import Metrics


class UpstreamError(Exception):
    """A call to an instance that got no answer.

    ``sent`` is False only when the request surely never reached the instance (the
    connection was refused), the one case where it may go elsewhere whatever it was.
    """

    def __init__(self, url: str, kind: str, sent: bool, detail: str) -> None:
        super().__init__(f"{url}: {kind} ({detail})")
        self.url, self.kind, self.sent, self.detail = url, kind, sent, detail


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


class Upstreams:
    """One pooled HTTP client per instance."""

    def __init__(
        self, urls: tuple[str, ...], connect_timeout: float, read_timeout: float, metrics: Metrics
    ) -> None:
        self.metrics = metrics
        self.timeout = aiohttp.ClientTimeout(
            total=None, connect=connect_timeout, sock_read=read_timeout
        )
        self.clients = {
            url: aiohttp.ClientSession(
                base_url=url,
                connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=300),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                timeout=self.timeout,
            )
            for url in urls
        }

    async def close(self) -> None:
        await asyncio.gather(*(c.close() for c in self.clients.values()))

    async def send(
        self,
        url: str,
        method: str,
        path_qs: str,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        timeout: aiohttp.ClientTimeout | None = None,
    ) -> Reply:
        """Send one request to ``url`` and read the whole answer."""
        client = self.clients[url]
        try:
            async with client.request(
                method,
                path_qs,
                headers=headers,
                data=body,
                timeout=timeout or self.timeout,
                allow_redirects=False,
            ) as resp:
                return Reply(resp.status, resp.headers, await resp.read())
        except aiohttp.ClientConnectorError as exc:
            raise self._failed(url, "refused", False, exc) from None
        except TimeoutError as exc:
            raise self._failed(url, "timeout", True, exc) from None
        except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
            raise self._failed(url, "reset", True, exc) from None
        except aiohttp.ClientError as exc:
            raise self._failed(url, "bad_response", True, exc) from None

    def _failed(self, url: str, kind: str, sent: bool, exc: BaseException) -> UpstreamError:
        self.metrics.upstream_errors.labels(url, kind).inc()
        return UpstreamError(url, kind, sent, str(exc) or type(exc).__name__)

    async def get_json(
        self, url: str, path: str, params: Mapping[str, str], timeout: float
    ) -> tuple[int, Any]:
        """A gateway-initiated GET (health, status, lists): status and decoded body."""
        path_qs = f"{path}?{urlencode(params)}" if params else path
        reply = await self.send(url, "GET", path_qs, timeout=aiohttp.ClientTimeout(total=timeout))
        return reply.status, reply.json()
