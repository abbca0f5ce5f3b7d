"""A stand-in for the Laravel backend's webhook endpoint, for the webhook relay's tests.

It checks each delivery exactly as the backend's middleware does (hex HMAC-SHA256 of
``X-Timestamp`` + raw body, compared in constant time, timestamp within 300 s), written
here on its own so a mistake in the gateway's signing cannot hide behind the same code.
Deliveries are recorded in arrival order; ``answer`` scripts the reply per delivery.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from tests.conftest import free_port


@dataclass(frozen=True)
class Delivered:
    webhook_id: str
    path: str
    body: bytes
    instance: str | None
    content_type: str
    signed: bool  # the signature and timestamp passed the backend's check

    @property
    def payload(self) -> dict[str, Any]:
        return json.loads(self.body)

    @property
    def session(self) -> str | None:
        data = self.payload.get("data") or {}
        return data.get("session_id")

    @property
    def seq(self) -> int:
        """The test's own sequence number, carried in ``data.seq``."""
        return int(self.payload["data"]["seq"])


Answer = Callable[[Delivered], Awaitable[web.Response] | web.Response]


def ok(_: Delivered) -> web.Response:
    return web.json_response({"success": True})


def laravel_check(secret: str, headers: Any, body: bytes, now: float) -> bool:
    """The backend's VerifyWebhookSignature, line by line."""
    signature, timestamp = headers.get("X-HMAC-Signature"), headers.get("X-Timestamp")
    if not signature or not timestamp or not timestamp.isdigit():
        return False
    if abs(now - int(timestamp)) > 300:
        return False
    expected = hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


@dataclass
class Backend:
    secret: str
    port: int = field(default_factory=free_port)
    answer: Answer = ok
    received: list[Delivered] = field(default_factory=list)
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signed = laravel_check(self.secret, request.headers, body, time.time())
        delivered = Delivered(
            webhook_id=request.headers.get("X-Webhook-Id", ""),
            path=request.raw_path,
            body=body,
            instance=request.headers.get("X-Instance-Url"),
            content_type=request.headers.get("Content-Type", ""),
            signed=signed,
        )
        self.received.append(delivered)
        if not signed:
            return web.json_response({"error": "Invalid signature"}, status=401)
        answer = self.answer(delivered)
        return answer if isinstance(answer, web.Response) else await answer

    async def start(self) -> None:
        """Listen on ``port`` (the same one again after :meth:`stop`)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def by_session(self) -> dict[str | None, list[int]]:
        """The ``data.seq`` numbers each session received, in arrival order."""
        seen: dict[str | None, list[int]] = {}
        for d in self.received:
            seen.setdefault(d.session, []).append(d.seq)
        return seen
