"""A stand-in for the Laravel backend's webhook endpoint: ``make run`` and the tests use it.

It checks each delivery exactly as the backend's middleware does (hex HMAC-SHA256 of
``X-Timestamp`` + raw body, compared in constant time, timestamp within 300 s), written
here on its own so that a mistake in the gateway's signing cannot hide behind shared code.
It keeps every delivery in arrival order, and ``answer`` decides each reply (2xx by
default; a bad signature always gets 401, as from Laravel). Run it with
``python -m dev.backend --port 8090``: it logs one line per event.
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import socket
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from dev.serving import hmac_secret, serve

log = logging.getLogger("dev.backend")


@dataclass(frozen=True)
class Delivered:
    """One POST the backend received, and whether its signature held."""

    webhook_id: str
    path: str
    body: bytes
    instance: str | None
    content_type: str
    signed: bool

    @property
    def payload(self) -> dict[str, Any]:
        """The JSON body (an empty dict when it is not a JSON object)."""
        try:
            payload = json.loads(self.body)
        except (ValueError, RecursionError):
            return {}
        return payload if isinstance(payload, dict) else {}

    @property
    def event(self) -> str | None:
        return self.payload.get("event")

    @property
    def session(self) -> str | None:
        data = self.payload.get("data")
        return data.get("session_id") if isinstance(data, dict) else None


Answer = Callable[[Delivered], Awaitable[web.Response] | web.Response]


def accept(_: Delivered) -> web.Response:
    return web.json_response({"success": True})


async def up(_: web.Request) -> web.Response:
    return web.json_response({"status": "up"})


def laravel_check(secret: str, headers: Mapping[str, str], body: bytes, now: float) -> bool:
    """The backend's signature middleware, step by step."""
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
    port: int
    host: str = "127.0.0.1"
    answer: Answer = accept
    received: list[Delivered] = field(default_factory=list)
    runner: web.AppRunner | None = None
    held: socket.socket | None = None  # bound to ``port``, not listening: see ``down``

    @classmethod
    def down(cls, secret: str, host: str = "127.0.0.1") -> Backend:
        """A backend not started yet, whose free port is held until it starts.

        The port is bound but not listened on, so a delivery meanwhile is refused as by a
        stopped backend, and no other server on the machine can take the port and answer
        in its place.
        """
        held = socket.socket()
        held.bind((host, 0))
        return cls(secret, held.getsockname()[1], host, held=held)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def _handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        delivered = Delivered(
            webhook_id=request.headers.get("X-Webhook-Id", ""),
            path=request.raw_path,
            body=body,
            # The instance behind the gateway's URL, when the backend is shown the gateway.
            instance=request.headers.get("X-WhatsApp-Instance")
            or request.headers.get("X-Instance-Url"),
            content_type=request.headers.get("Content-Type", ""),
            signed=laravel_check(self.secret, request.headers, body, time.time()),
        )
        self.received.append(delivered)
        log.info(
            "%s %s from %s%s",
            delivered.event or "(no event)",
            delivered.session or "-",
            delivered.instance or "?",
            "" if delivered.signed else ": BAD SIGNATURE, answered 401",
        )
        if not delivered.signed:
            return web.json_response({"error": "Invalid signature"}, status=401)
        answer = self.answer(delivered)
        return answer if isinstance(answer, web.Response) else await answer

    def app(self) -> web.Application:
        app = web.Application(client_max_size=64 * 1024**2)
        app.router.add_get("/up", up)  # for make run's readiness check; not recorded
        app.router.add_route("*", "/{tail:.*}", self._handle)
        return app

    async def start(self) -> None:
        """Listen on ``port`` (the same one again after :meth:`stop`)."""
        self.runner = web.AppRunner(self.app(), access_log=None)
        await self.runner.setup()
        site: web.BaseSite = (
            web.TCPSite(self.runner, self.host, self.port)
            if self.held is None
            else web.SockSite(self.runner, self.held)
        )
        self.held = None
        await site.start()

    async def stop(self) -> None:
        if self.held is not None:
            self.held.close()
            self.held = None
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m dev.backend", description="A stand-in Laravel webhook endpoint."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args(argv)
    secret = hmac_secret()
    if not secret:
        parser.error("HMAC_SECRET must be set in the environment")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    backend = Backend(secret, args.port, args.host)
    log.info("webhook backend on %s, checking signatures as Laravel does", backend.url)
    serve(backend.app(), args.host, args.port)


if __name__ == "__main__":
    main()
