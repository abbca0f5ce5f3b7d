"""Finding a session that is not where its pin says, by asking the live instances.

Concurrent requests for the same session (and key) share one search, so a burst after an
instance restart costs one round of status calls, not one per request. The search re-pins
what it finds before it ends, so a request arriving just after it sees the new pin.

A search costs every instance a call, so it is bounded three ways: it carries the caller's
own ``api_key`` (a caller without a valid key learns nothing, and the instances refuse it
cheaply); at most ``concurrency`` searches run at once per process; and a session that
every instance said it does not hold is not searched again for ``negative_ttl`` seconds,
unless its pin changes meanwhile (a create, a webhook).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import urlencode

from gateway.metrics import GatewayMetrics
from gateway.state.pins import PinChange
from gateway.state.store import PinStore
from gateway.upstream.client import Reply, UpstreamError, Upstreams

log = logging.getLogger("gateway.rediscovery")


@dataclass(frozen=True)
class Search:
    """What the instances asked said about a session."""

    holder: str | None = None  # the instance that holds it
    unsure: tuple[str, ...] = ()  # asked but gave no answer: they may hold it
    denied: bool = False  # an instance refused the caller's key

    @property
    def absent(self) -> bool:
        """Every instance asked answered that it does not hold the session."""
        return self.holder is None and not self.unsure and not self.denied


class Rediscovery:
    def __init__(
        self,
        upstreams: Upstreams,
        pins: PinStore,
        *,
        api_token: str,
        timeout: float,
        negative_ttl: float,
        concurrency: int,
        metrics: GatewayMetrics,
    ) -> None:
        self.upstreams, self.pins, self.metrics = upstreams, pins, metrics
        self.api_token, self.timeout, self.negative_ttl = api_token, timeout, negative_ttl
        self._slots = asyncio.Semaphore(concurrency)
        self._searches: dict[tuple[str, str], asyncio.Task[Search]] = {}
        self._absent: dict[str, float] = {}  # session id -> until when, in insertion order
        pins.on_change(self._changed)

    def known_absent(self, session_id: str) -> bool:
        """Every instance said it does not hold the session, less than ``negative_ttl`` ago."""
        until = self._absent.get(session_id)
        return until is not None and until > time.monotonic()

    async def find(
        self, session_id: str, candidates: Sequence[str], api_key: str | None, complete: bool
    ) -> Search:
        """Ask ``candidates`` whether they hold the session; the holder is pinned.

        ``complete``: the candidates are every instance that may hold it, so a search in
        which all of them said no is remembered as absent.
        """
        key = api_key or self.api_token
        task = self._searches.get((session_id, key))
        if task is None:
            task = asyncio.create_task(self._search(session_id, tuple(candidates), key))
            self._searches[(session_id, key)] = task
            task.add_done_callback(lambda _: self._searches.pop((session_id, key), None))
        search = await asyncio.shield(task)
        if complete and search.absent and self.negative_ttl > 0:
            self._remember_absent(session_id)
        return search

    async def _search(self, session_id: str, candidates: tuple[str, ...], key: str) -> Search:
        query = f"?{urlencode({'api_key': key})}" if key else ""
        path = f"/api/sessions/{session_id}/status{query}"
        async with self._slots:
            asks = {asyncio.create_task(self._ask(url, path)): url for url in candidates}
            unsure: list[str] = []
            try:
                for ask in asyncio.as_completed(asks):
                    url, reply = await ask
                    if reply is None or reply.status >= 500:
                        unsure.append(url)
                    elif reply.status == 200 and isinstance(reply.json(), dict):
                        await self._found(session_id, url)
                        return Search(holder=url)
                    elif reply.status in (401, 403):
                        return Search(denied=True)  # the key is wrong for all of them
                    elif not reply.session_not_found:
                        unsure.append(url)
            finally:
                for ask in asks:
                    ask.cancel()
        self.metrics.rediscoveries.labels("not_found").inc()
        return Search(unsure=tuple(u for u in candidates if u in unsure))

    async def _ask(self, url: str, path: str) -> tuple[str, Reply | None]:
        try:
            return url, await self.upstreams.send(url, "GET", path, timeout=self.timeout)
        except UpstreamError:
            return url, None

    async def _found(self, session_id: str, url: str) -> None:
        self.metrics.rediscoveries.labels("found").inc()
        if self.pins.sessions.get(session_id) != url:
            await self.pins.pin_session(session_id, url, source="rediscovery")
            log.info("session found again on %s", url)

    def _remember_absent(self, session_id: str) -> None:
        now = time.monotonic()
        # One TTL for all, so entries expire in insertion order: drop the expired ones.
        while self._absent:
            oldest, until = next(iter(self._absent.items()))
            if until > now:
                break
            del self._absent[oldest]
        self._absent.pop(session_id, None)
        self._absent[session_id] = now + self.negative_ttl

    def _changed(self, change: PinChange) -> None:
        self._absent.pop(change.session_id, None)
