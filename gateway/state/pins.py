"""The pin map: which instance holds each session and workspace, in every process's memory.

Redis holds the truth shared by all gateway processes and kept across restarts; memory
answers every look-up of a known session without a round trip. Each change is published on
one channel, so the other processes' memories follow within milliseconds. When Redis does
not answer, the map keeps working from memory and the link writes the changes back later.

Every change of a session's pin goes through ``pin_session`` or ``unpin_session``, which
tell the listeners registered with ``on_change`` (e.g. a database writer).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import logging
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from redis.asyncio.client import PubSub

from gateway.metrics import GatewayMetrics
from gateway.shared.tasks import cancel_and_wait
from gateway.state.instances import Fleet
from gateway.state.link import REDIS_ERRORS, Backlog, Change, RedisLink, Unavailable
from gateway.state.pin_table import PinTable

log = logging.getLogger("gateway.pins")

SCAN_BATCH = 10_000  # pins per Redis round trip when loading the map
P = TypeVar("P", bound=MutableMapping[str, str])
CHANGE_KINDS = frozenset({"session", "workspace", "draining"})
MIRROR_PING = 1.0  # seconds of silence before the subscription is pinged, and for the pong
MIRROR_PAUSE, MIRROR_PAUSE_MAX = 0.1, 5.0  # before subscribing again, doubling


def _set_decoded(pins: dict[str, str], field: bytes, url: str) -> None:
    pins[field.decode()] = url


@dataclass(frozen=True)
class PinChange:
    """One session pinned to an instance, or unpinned, by this process."""

    session_id: str
    url: str | None  # None: the session was unpinned
    workspace_id: str | None
    # "create" | "create-unknown" | "delete" | "rediscovery" | "reconcile" | "admin" | "webhook"
    source: str


PinListener = Callable[[PinChange], Awaitable[None] | None]


class PinMap:
    """Session and workspace pins and draining marks, mirrored from Redis."""

    def __init__(self, link: RedisLink, fleet: Fleet, metrics: GatewayMetrics) -> None:
        self.link, self.fleet, self.metrics = link, fleet, metrics
        self.keys = link.keys
        self.sessions = PinTable()
        self.workspaces: dict[str, str] = {}
        self._listeners: list[PinListener] = []
        self._loaded = False  # pins were loaded from Redis once
        self.mirrored = False  # memory follows the other processes' changes
        self._reloading: list[Change] | None = None  # changes made while a reload reads Redis
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        link.on_back(self._reload)

    async def subscribe(self) -> PubSub | None:
        """The subscription to the other processes' changes; None if Redis does not answer.

        Made before the link first loads the map, so that no change falls between the load
        and the subscription, and the map is loaded once at start-up rather than twice.
        """
        pubsub = self.link.subscriber.pubsub()
        try:
            async with asyncio.timeout(self.link.timeout):
                await pubsub.subscribe(self.keys.events)
        except REDIS_ERRORS:
            with contextlib.suppress(*REDIS_ERRORS):
                await pubsub.aclose()
            return None
        return pubsub

    async def start(self, subscribed: PubSub | None) -> None:
        """Follow the other processes' changes (the link has loaded the map).

        ``subscribed``, made before that load, is used if the load succeeded; else the
        follower subscribes and loads again once Redis answers.
        """
        if subscribed is not None and not self.link.available:
            with contextlib.suppress(*REDIS_ERRORS):
                await subscribed.aclose()
            subscribed = None
        self._task = asyncio.create_task(self._follow(subscribed))

    async def close(self) -> None:
        # The flag ends the follower within one MIRROR_PING even when the cancellation is
        # lost on the way: redis-py's read timeout (asyncio.timeout on Python 3.11) can
        # swallow a cancel that arrives as it expires, and shutdown then hung for good.
        self._closing = True
        await cancel_and_wait([self._task])

    # --- reads --------------------------------------------------------------------------

    async def session(self, session_id: str, fresh: bool = False) -> str | None:
        """The instance pinned for a session: memory first, Redis on a miss.

        ``fresh``: from Redis (while it answers), e.g. right after another process pinned it.
        """
        return await self._lookup(self.sessions, self.keys.sessions, session_id, fresh)

    def remembered(self, session_id: str) -> str | None:
        """The session's pin from memory, while memory follows Redis; else None (then ask
        ``session``). The request path's look-up, with no await when it hits."""
        url = self.sessions.get(session_id)
        if url is not None and self.mirrored:
            self.metrics.count(self.metrics.pin_cache, "hit")
            return url
        return None

    async def workspace(self, workspace_id: str) -> str | None:
        """The instance of the workspace's most recent session."""
        return await self._lookup(self.workspaces, self.keys.workspaces, workspace_id)

    async def _lookup(
        self, cache: MutableMapping[str, str], key: str, field: str, fresh: bool = False
    ) -> str | None:
        """Memory while the mirror keeps it current; else Redis, and memory if Redis is away."""
        url = cache.get(field)
        if url is not None and self.mirrored and not fresh:
            self.metrics.count(self.metrics.pin_cache, "hit")
            return url
        self.metrics.child(self.metrics.pin_cache, "miss").inc()
        with contextlib.suppress(Unavailable):
            raw = await self.link.run(lambda: self.link.redis.hget(key, field))
            if raw is None:
                cache.pop(field, None)
                return None
            url = cache[field] = raw.decode()
        return url

    # --- writes -------------------------------------------------------------------------

    def on_change(self, listener: PinListener) -> None:
        """Call ``listener`` once for each session pin this process changes.

        Changes mirrored from other processes are not reported (their process reports
        them). A failing listener is logged and does not undo or fail the change.
        """
        self._listeners.append(listener)

    async def pin_session(
        self, session_id: str, url: str, workspace_id: str | None = None, *, source: str
    ) -> None:
        """Pin a session (and its workspace, whose newest session it now is) to ``url``."""
        changes: list[Change] = [("session", session_id, url)]
        if workspace_id is not None:
            changes.append(("workspace", workspace_id, url))
        await self._write(changes)
        await self._emit(PinChange(session_id, url, workspace_id, source))

    async def unpin_session(self, session_id: str, *, source: str) -> None:
        await self._write([("session", session_id, None)])
        await self._emit(PinChange(session_id, None, None, source))

    async def set_draining(self, url: str, draining: bool) -> None:
        await self._write([("draining", url, "1" if draining else None)])

    async def _write(self, changes: Sequence[Change]) -> None:
        for kind, ident, value in changes:
            self._apply(kind, ident, value)
        if self._reloading is not None:
            self._reloading.extend(changes)
        await self.link.write(changes)

    async def _emit(self, change: PinChange) -> None:
        for listener in self._listeners:
            try:
                result = listener(change)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a pin change listener failed (%s)", change.source)

    def _apply(self, kind: str, ident: str, value: str | None) -> None:
        if value is not None and (instance := self.fleet.get(value)) is not None:
            value = instance.url  # one string per instance, however many pins name it
        if kind == "draining":
            instance = self.fleet.get(ident)
            if instance is not None:
                instance.draining = value is not None
            return
        cache: MutableMapping[str, str] = self.sessions if kind == "session" else self.workspaces
        if value is None:
            cache.pop(ident, None)
        else:
            cache[ident] = value

    # --- the mirror ---------------------------------------------------------------------

    async def _reload(self, backlog: Backlog) -> Backlog:
        """Take Redis's pins, with this process's unwritten changes on top; what to write."""
        self._reloading = made_meanwhile = []
        try:
            loaded = await self.link.redis.getset(self.keys.loaded, "1")
            sessions = await self._scan(self.keys.sessions, PinTable(), PinTable.set_raw)
            workspaces = await self._scan(self.keys.workspaces, {}, _set_decoded)
            draining = await self.link.redis.smembers(self.keys.draining)
        finally:
            self._reloading = None
        if loaded is None and self._loaded:
            # Redis came back empty (restarted without persistence): memory is the truth.
            memory: Backlog = {("session", k): v for k, v in self.sessions.items()}
            memory |= {("workspace", k): v for k, v in self.workspaces.items()}
            memory |= {("draining", i.url): "1" for i in self.fleet.instances if i.draining}
            return memory | backlog
        self._loaded = True
        self.sessions, self.workspaces = sessions, workspaces
        marked = {m.decode() for m in draining}
        for instance in self.fleet.instances:
            instance.draining = instance.url in marked
        for (kind, ident), value in backlog.items():
            self._apply(kind, ident, value)
        for kind, ident, value in made_meanwhile:  # Redis may have answered before them
            self._apply(kind, ident, value)
        return backlog

    async def _scan(self, key: str, pins: P, store: Callable[[P, bytes, str], None]) -> P:
        """A whole hash of pins, read in batches that each fit within ``redis_timeout``.

        A million pins in one HGETALL take longer than that, and a reply that large costs
        as much memory again while it is decoded. Each instance URL is kept once, however
        many sessions it holds. Other processes' changes made during the scan reach the map
        as events afterwards (the follower subscribes before it reloads); this process's
        own are applied again after the reload.
        """
        urls = {url.encode(): url for url in self.fleet.urls}
        cursor = 0
        while True:
            cursor, batch = await self.link.redis.hscan(key, cursor, count=SCAN_BATCH)
            for field, value in batch.items():
                url = urls.get(value)
                if url is None:  # an instance no longer configured: still kept once
                    url = urls[value] = value.decode()
                store(pins, field, url)
            if cursor == 0:
                return pins

    async def _follow(self, subscribed: PubSub | None) -> None:
        """Apply the other processes' changes as they are published; never give up.

        A subscription that fails or goes silent (a half-open connection answers no ping)
        is dropped and made again, after a growing pause; meanwhile pins are read from
        Redis, so no process routes from a memory that stopped following.
        """
        pause = MIRROR_PAUSE
        while not self._closing:
            await self.link.back.wait()
            pubsub, subscribed = subscribed, None
            try:
                if pubsub is None:
                    pubsub = self.link.subscriber.pubsub()
                    await pubsub.subscribe(self.keys.events)
                    # Changes made between the last load and this subscription would be
                    # missed: load again.
                    await self.link.reconnected()
                self._mirroring(True)
                pause = MIRROR_PAUSE
                await self._listen(pubsub)
            except REDIS_ERRORS as exc:
                self._mirroring(False)
                log.warning("pin mirror lost (%s); reading pins from Redis", type(exc).__name__)
            finally:
                with contextlib.suppress(*REDIS_ERRORS):
                    await pubsub.aclose()
            await asyncio.sleep(pause)
            pause = min(pause * 2, MIRROR_PAUSE_MAX)

    async def _listen(self, pubsub: PubSub) -> None:
        """Events until the subscription fails; a silent one is pinged, and must answer."""
        pinged = False
        while not self._closing:
            message = await pubsub.get_message(timeout=MIRROR_PING)
            if message is None:
                if pinged:
                    raise TimeoutError("the pin subscription answered no ping")
                await pubsub.ping()
                pinged = True
                continue
            pinged = False
            if message["type"] == "message":
                self._on_event(message["data"])

    def _mirroring(self, up: bool) -> None:
        self.mirrored = up
        self.metrics.pin_mirror_up.set(int(up))

    def _on_event(self, data: Any) -> None:
        """Apply one published change; one that cannot be read is counted and skipped."""
        try:
            event = json.loads(data)
            origin, kind, ident, url = event["origin"], event["kind"], event["id"], event["url"]
        except (TypeError, ValueError, KeyError, IndexError):
            origin = kind = ident = url = None
        if origin == self.link.origin:
            return
        if (
            kind not in CHANGE_KINDS
            or not isinstance(ident, str)
            or not isinstance(url, str | None)
        ):
            self.metrics.pin_events.labels("bad").inc()
            log.warning("ignored a pin change event it cannot read")
            return
        self._apply(kind, ident, url)
        self.metrics.pin_events.labels("applied").inc()
