"""The webhook route: an instance's event is checked, queued durably, and read for its pin.

Only a correctly signed, fresh event is kept; anything else is answered ``401`` and leaves no
trace. A valid event is answered ``200`` only once Redis holds it (``503`` when Redis cannot
take it, so the instance sends it again). The same signature again (a replay, whatever its
path or ``X-Instance-Url``) and an instance's retry of the event just kept for its session
are answered ``200`` as duplicates and kept once.

An event that shows where a session lives re-pins the session before the answer, so the
next request for it goes straight to the right instance. Which instance sent it is only
``X-Instance-Url``, which the signature does not cover, so the pin moves only when that
instance, asked, says it holds the session.
"""

from __future__ import annotations

import asyncio
import logging
import posixpath
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from urllib.parse import urlencode

from aiohttp import web
from redis.exceptions import RedisError

from gateway.decisions.events import Event, match_instance, parse, sender
from gateway.decisions.view import BackendView
from gateway.handlers.forwarded import INDEX_HEADER, header_text, instance_headers
from gateway.http.errors import json_error
from gateway.http.headers import INSTANCE_HEADER
from gateway.http.requests import ROUTE
from gateway.metrics import GatewayMetrics
from gateway.shared.outbox import Incoming, Outbox
from gateway.shared.redis_url import NotReplicated
from gateway.shared.signature import (
    INSTANCE_URL_HEADER,
    MESSAGES,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Rejection,
    replay_ttl,
    verify,
)
from gateway.state.store import PinStore
from gateway.upstream.client import UpstreamError, Upstreams

log = logging.getLogger("gateway.webhooks")

MAX_PATH = 2048
# RFC 3986 path and query characters, percent escapes well formed: the path is sent on as is.
PLAIN_PATH = re.compile(r"(?:[A-Za-z0-9\-._~!$&'()*+,;=:@/?]|%[0-9A-Fa-f]{2})+")


@dataclass
class Holders:
    """Asks an instance whether it holds a session, with the gateway's own key."""

    upstreams: Upstreams
    api_token: str
    timeout: float

    async def holds(self, url: str, session_id: str) -> bool:
        """``True`` only when ``url`` answers the session's status ``200``."""
        query = f"?{urlencode({'api_key': self.api_token})}" if self.api_token else ""
        path = f"/api/sessions/{session_id}/status{query}"
        try:
            reply = await self.upstreams.send(url, "GET", path, timeout=self.timeout)
        except UpstreamError:
            return False
        return reply.status == 200 and isinstance(reply.json(), dict)


@dataclass
class Receiver:
    """Everything the route needs; ``secret`` empty means the route is off."""

    secret: str
    prefix: str  # webhook_path
    instances: tuple[str, ...]
    dedup_window: float
    max_body: int
    timeout: float  # longest wait on Redis
    outbox: Outbox
    pins: PinStore
    metrics: GatewayMetrics
    holds: Callable[[str, str], Awaitable[bool]]  # (instance, session id): it holds it
    min_replicas: int = 0  # answer 200 only once this many replicas have the event
    view: BackendView | None = None  # what the backend is told; None: X-Instance-Url as sent

    def _reject(self, reason: str, status: int, message: str) -> web.Response:
        self.metrics.webhooks_rejected.labels(reason).inc()
        return json_error(status, message)

    async def handle(self, request: web.Request) -> web.Response:
        request[ROUTE] = f"{self.prefix}*"
        if not self.secret:
            return self._reject(
                "off", 404, "The webhook relay is off: no HMAC_SECRET is configured"
            )
        if request.method != "POST":
            return json_error(405, "Webhooks are sent with POST")
        path = request.raw_path
        if (
            len(path) > MAX_PATH
            or not PLAIN_PATH.fullmatch(path)
            or not path.startswith(self.prefix)
            or posixpath.normpath(request.path) != request.path.rstrip("/")
        ):
            return self._reject("bad_path", 400, "Webhook path is not a plain path")
        if (request.content_length or 0) > self.max_body:
            return self._too_large()
        try:
            body = await request.clone(client_max_size=self.max_body).read()
        except web.HTTPRequestEntityTooLarge:
            return self._too_large()
        headers = request.headers
        timestamp, signature = headers.get(TIMESTAMP_HEADER), headers.get(SIGNATURE_HEADER)
        rejection = verify(self.secret, timestamp, signature, body, time.time())
        if rejection is not None or timestamp is None or signature is None:
            rejection = rejection or Rejection.MISSING
            return self._reject(rejection.value, 401, MESSAGES[rejection])
        event = parse(body)
        sent = header_text(headers.get(INSTANCE_URL_HEADER, ""))
        incoming = Incoming(
            path=path,
            body=body,
            instance=sent,
            content_type=headers.get("Content-Type", "application/json"),
            name=event.name or "",
            lane=event.lane,
            signature=signature,
            sender=sender(sent, self.instances),
            headers=self._shown(request, sent),
        )
        try:
            async with asyncio.timeout(self.timeout):
                now = time.time()
                repeats = await self.outbox.receive(
                    incoming,
                    now,
                    self.dedup_window,
                    replay_ttl(timestamp, now),
                    replicas=self.min_replicas,
                    wait=self.timeout / 2,
                )
        except NotReplicated as exc:
            log.warning("a webhook event is not on enough replicas yet (%d)", exc.acked)
            return self._reject(
                "not_replicated",
                503,
                f"The event is not yet on {self.min_replicas} Redis replicas; send it again",
            )
        except (RedisError, OSError, TimeoutError) as exc:
            log.warning("could not queue a webhook event (%s)", type(exc).__name__)
            await self._pin(event, incoming.instance)  # genuine, even if it cannot be kept
            return self._reject("redis_down", 503, "The event could not be queued; send it again")
        if repeats is not None:
            self.metrics.webhooks_duplicates.labels(repeats.kind).inc()
            return web.json_response({"success": True, "queued": True, "duplicate": True})
        self.metrics.webhooks_received.labels(event.label).inc()
        await self._pin(event, incoming.instance)
        return web.json_response({"success": True, "queued": True})

    def _shown(self, request: web.Request, sent: str) -> tuple[tuple[str, str], ...]:
        """What the backend gets besides the body: ``X-Instance-Url`` as it is to see it
        (the gateway's URL, by default), the instance itself in ``X-WhatsApp-Instance`` and
        ``X-WhatsApp-Instance-Index``, and the instance's address and ``User-Agent``."""
        if self.view is None:
            return ()
        shown = instance_headers(request)
        if not self.view.public_url:
            return (*shown, (INSTANCE_URL_HEADER, sent)) if sent else tuple(shown)
        shown.append((INSTANCE_URL_HEADER, self.view.public_url))
        url = match_instance(sent, self.instances)
        if url is not None or sent:
            shown.append((INSTANCE_HEADER, url or sent))
        if url is not None:
            shown.append((INDEX_HEADER, str(self.instances.index(url))))
        return tuple(shown)

    def _too_large(self) -> web.Response:
        return self._reject("too_large", 413, f"Webhook body is over {self.max_body} bytes")

    async def _pin(self, event: Event, instance: str) -> None:
        """Re-pin the event's session to the instance that sent it, when that says anything.

        ``instance`` is unsigned: a new pin is written only once that instance said it holds
        the session (an event sent again with another instance's URL moves nothing).
        """
        if not event.pins or event.session_id is None:
            return
        url = match_instance(instance, self.instances)
        if url is None or await self.pins.session(event.session_id) == url:
            return
        if not await self.holds(url, event.session_id):
            log.info("an event names %s, which does not hold its session: no pin", url)
            return
        await self.pins.pin_session(event.session_id, url, source="webhook")
        self.metrics.webhook_pins.labels(url).inc()
