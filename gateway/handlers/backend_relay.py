"""The instances' other calls to the backend: forwarded to it as they came.

An instance whose ``LARAVEL_URL`` is the gateway sends it more than events: at start-up it
asks which sessions to restore (``GET /api/whatsapp/accounts/active``, its api key in
``X-API-Key``), and it posts chat batches (``POST /api/whatsapp/chats/sync``, signed like an
event). Those go on to ``backend_url`` as a plain reverse proxy and the backend's answer comes
back, but only for a request that proves it comes from an instance: a valid signature, or the
instances' shared key. Anything else is refused ``401`` and reaches nothing.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

from gateway.handlers.forwarded import forwarded_for
from gateway.http.errors import json_error, unanswered
from gateway.http.headers import end_to_end
from gateway.http.requests import ROUTE
from gateway.metrics import GatewayMetrics
from gateway.shared.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify

log = logging.getLogger("gateway.backend")

PREFIX = "/api/whatsapp/"
KEY_HEADER = "X-API-Key"
# Set here for the backend, whatever the instance sent.
REPLACED = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host"})


@dataclass
class BackendRelay:
    """``backend_url`` empty: the route answers ``404``."""

    backend_url: str
    secret: str  # the instances' webhook secret
    api_token: str  # the instances' shared api key
    timeout: float
    max_body: int
    metrics: GatewayMetrics
    _http: aiohttp.ClientSession | None = field(default=None, init=False, repr=False)

    def proven(self, request: web.Request, body: bytes) -> bool:
        """Whether the request shows it comes from an instance."""
        headers = request.headers
        if self.secret and SIGNATURE_HEADER in headers:
            timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
            return verify(self.secret, timestamp, signature, body, time.time()) is None
        key = headers.get(KEY_HEADER)
        if not (self.api_token and key):
            return False
        given = key.encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, self.api_token.encode())

    async def handle(self, request: web.Request) -> web.StreamResponse:
        request[ROUTE] = f"{PREFIX}*"
        if not self.backend_url:
            return json_error(404, "No backend_url is configured: calls to the backend are off")
        if (request.content_length or 0) > self.max_body:
            return json_error(413, f"Body is over {self.max_body} bytes")
        try:
            body = await request.clone(client_max_size=self.max_body).read()
        except web.HTTPRequestEntityTooLarge:
            return json_error(413, f"Body is over {self.max_body} bytes")
        if not self.proven(request, body):
            self._count("refused")
            return json_error(401, "Not an instance: a valid signature or X-API-Key is required")
        return await self._forward(request, body)

    async def _forward(self, request: web.Request, body: bytes) -> web.StreamResponse:
        url = self.backend_url + request.raw_path
        headers = [
            (name.decode("latin-1"), value.decode("latin-1"))
            for name, value in end_to_end(request.raw_headers)
            if name.lower() not in REPLACED
        ]
        headers += [
            ("X-Forwarded-For", forwarded_for(request)),
            ("X-Forwarded-Proto", request.scheme),
            ("X-Forwarded-Host", request.host),
        ]
        try:
            async with self._session().request(
                request.method, url, headers=headers, data=body or None
            ) as resp:
                answer = await resp.read()
                kept = [
                    (name.decode("latin-1"), value.decode("latin-1"))
                    for name, value in end_to_end(resp.raw_headers)
                ]
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            self._count("unreachable")
            return unanswered(502, "The backend could not be reached", "not-sent")
        except TimeoutError:
            self._count("timeout")
            return unanswered(504, "The backend did not answer in time", "unknown")
        except aiohttp.ClientError as exc:
            self._count("failed")
            log.warning("a call to the backend failed (%s)", type(exc).__name__)
            return unanswered(502, "The backend's answer was cut off", "unknown")
        self._count("forwarded")
        return web.Response(status=resp.status, headers=kept, body=answer)

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            self._http = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                auto_decompress=False,  # passed on as it came
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding"),
            )
        return self._http

    def _count(self, result: str) -> None:
        self.metrics.count(self.metrics.backend_calls, result)

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
