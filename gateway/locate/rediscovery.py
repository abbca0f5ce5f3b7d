"""Finding a session that is not where its pin says, by asking every other live instance.

Concurrent requests for the same session share one search, so a burst after an instance
restart costs one round of status calls, not one per request. The search re-pins what it
finds before it ends, so a request arriving just after it sees the new pin.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

from gateway.metrics import Metrics
from gateway.state.store import PinStore
from gateway.upstream.client import UpstreamError, Upstreams

log = logging.getLogger("gateway.rediscovery")


class Rediscovery:
    def __init__(
        self,
        upstreams: Upstreams,
        pins: PinStore,
        api_token: str,
        timeout: float,
        metrics: Metrics,
    ) -> None:
        self.upstreams = upstreams
        self.pins = pins
        self.params = {"api_key": api_token} if api_token else {}
        self.timeout = timeout
        self.metrics = metrics
        self._searches: dict[str, asyncio.Task[str | None]] = {}

    async def find(self, session_id: str, candidates: Iterable[str]) -> str | None:
        """The instance among ``candidates`` that holds the session (now pinned), or None."""
        task = self._searches.get(session_id)
        if task is None:
            task = asyncio.create_task(self._search(session_id, tuple(candidates)))
            self._searches[session_id] = task
            task.add_done_callback(lambda _: self._searches.pop(session_id, None))
        return await asyncio.shield(task)

    async def _search(self, session_id: str, candidates: tuple[str, ...]) -> str | None:
        path = f"/api/sessions/{session_id}/status"
        asks = [asyncio.create_task(self._holds(url, path)) for url in candidates]
        try:
            for ask in asyncio.as_completed(asks):
                url = await ask
                if url is not None:
                    await self.pins.pin_session(session_id, url, source="rediscovery")
                    self.metrics.rediscoveries.labels("found").inc()
                    log.info("session found again on %s", url)
                    return url
        finally:
            for ask in asks:
                ask.cancel()
        self.metrics.rediscoveries.labels("not_found").inc()
        return None

    async def _holds(self, url: str, path: str) -> str | None:
        try:
            status, body = await self.upstreams.get_json(url, path, self.params, self.timeout)
        except UpstreamError:
            return None
        return url if status == 200 and isinstance(body, dict) else None
