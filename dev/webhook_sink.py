"""What a WhatsApp instance does with its events: POST them, signed, to ``LARAVEL_URL``.

The simulator reports like the Node instances: each event goes to
``{LARAVEL_URL}/api/whatsapp/webhooks/webjs`` as ``{"event": name, "data": {...}}``, with
``X-Timestamp``, ``X-HMAC-Signature`` and ``X-Instance-Url``, one at a time in the order
they happened, tried a few times in memory and then dropped. Pointed at the gateway (as
``make run`` does), the drop never happens: the gateway answers as soon as Redis holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

import aiohttp

from gateway.shared.signature import INSTANCE_URL_HEADER, signed_headers
from gateway.shared.tasks import cancel_and_wait

log = logging.getLogger("dev.simulator")

WEBHOOK_PATH = "/api/whatsapp/webhooks/webjs"
USER_AGENT = "WhatsApp-WebJS-Service/1.0"  # the instances' webhookNotifier sends this one


class Reporter:
    """Posts an instance's events in order; a few tries each, then it gives up, as they do."""

    def __init__(
        self,
        laravel_url: str,
        secret: str,
        instance_url: str,
        *,
        tries: int = 3,
        retry_delay: float = 1.0,
        timeout: float = 10.0,
    ) -> None:
        self.url = laravel_url.rstrip("/") + WEBHOOK_PATH
        self.secret, self.instance_url = secret, instance_url
        self.tries, self.retry_delay, self.timeout = tries, retry_delay, timeout
        self._queue: asyncio.Queue[bytes] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def report(self, event: str, data: dict[str, Any]) -> None:
        self._queue.put_nowait(json.dumps({"event": event, "data": data}).encode())

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        await cancel_and_wait([self._task])

    async def _run(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self.timeout)
        async with aiohttp.ClientSession(timeout=timeout) as http:
            while True:
                body = await self._queue.get()
                await self._post(http, body)

    async def _post(self, http: aiohttp.ClientSession, body: bytes) -> None:
        for attempt in range(1, self.tries + 1):
            headers = {
                "Content-Type": "application/json",
                "User-Agent": USER_AGENT,
                INSTANCE_URL_HEADER: self.instance_url,
                **signed_headers(self.secret, body, time.time()),
            }
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                async with http.post(self.url, data=body, headers=headers) as resp:
                    if 200 <= resp.status < 300:
                        return
                    log.warning("webhook answered %d (attempt %d)", resp.status, attempt)
            if attempt < self.tries:
                await asyncio.sleep(self.retry_delay)
        log.warning("webhook dropped after %d tries: %s", self.tries, body[:120])
