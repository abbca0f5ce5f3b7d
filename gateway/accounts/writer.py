"""The write-behind: pin changes are queued in Redis and written to the table in the background.

``record`` is all a request pays: one Redis call (or, while Redis is away, a dict entry
flushed when it returns). The writer loop takes the queue's oldest updates in batches while
it holds the queue's lock, writes them, and acknowledges them; when the database fails it
waits 1 s, doubling to 30 s, and drains the queue in order once the database is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Sequence

from gateway.accounts.pending import REDIS_ERRORS, PendingUpdates, Update, update_for
from gateway.accounts.table import AccountsTable, DatabaseUnavailable, LostLock
from gateway.decisions.view import BackendView
from gateway.metrics import DatabaseMetrics
from gateway.shared.settings import Settings
from gateway.shared.tasks import cancel_and_wait

log = logging.getLogger("gateway.accounts")

FIRST_BACKOFF, MAX_BACKOFF = 1.0, 30.0
LOCK_MARGIN = 5.0  # seconds a lock outlives the longest batch


def next_backoff(previous: float) -> float:
    """1 s after the first failure, then twice the previous wait, at most 30 s."""
    return min(MAX_BACKOFF, max(FIRST_BACKOFF, previous * 2))


def open_writer(settings: Settings, metrics: DatabaseMetrics) -> Writer:
    """The writer of a gateway configured with ``mysql_dsn`` (nothing connects before use)."""
    view = BackendView(settings.instances, settings.shown_url)
    return Writer(
        PendingUpdates(settings.redis_url, settings.key_prefix, settings.redis_timeout),
        AccountsTable(settings.mysql_dsn, settings.database, metrics, view),
        metrics,
        view,
    )


class Writer:
    """Queues updates and applies them to the table, one writer process at a time."""

    def __init__(
        self,
        pending: PendingUpdates,
        table: AccountsTable,
        metrics: DatabaseMetrics,
        view: BackendView,
        *,
        poll: float = 1.0,
    ) -> None:
        self.pending, self.table, self.metrics = pending, table, metrics
        self.view = view  # what the rows say: the gateway's URL or the instances'
        self.poll = poll
        s = table.settings
        self.lock_ttl = s.connect_timeout + s.query_timeout + LOCK_MARGIN
        self._token = uuid.uuid4().hex
        self._unsent: dict[str, Update] = {}  # queued while Redis was away
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._failing_since: float | None = None
        self._last_warning = 0.0

    async def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def close(self) -> None:
        # The flag ends the loop even if a client library swallowed the cancellation.
        self._stopping = True
        self._wake.set()
        await cancel_and_wait([self._task])
        with contextlib.suppress(*REDIS_ERRORS):
            await self.pending.release(self._token)
        await self.table.close()
        await self.pending.close()

    # --- the request side ---------------------------------------------------------------

    async def record(self, session_id: str, url: str) -> None:
        """Queue ``session_id`` → ``url`` for the table: one Redis call, never a database one."""
        update = update_for(session_id, url, self.view)
        if not self._unsent:
            try:
                await self.pending.add([update])
            except REDIS_ERRORS:
                pass
            else:
                self._wake.set()
                return
        self._unsent[session_id] = update  # written to Redis by the loop when it answers
        self._wake.set()

    async def queue(self, updates: Sequence[Update]) -> None:
        """Queue many updates in one Redis call (reconciliation's fixes); raises if Redis fails."""
        await self.pending.add(updates)
        self._wake.set()

    # --- the writer ---------------------------------------------------------------------

    async def _loop(self) -> None:
        backoff = 0.0
        while not self._stopping:
            if backoff:
                await asyncio.sleep(backoff)  # new updates do not shorten a backoff
            else:
                await self._wait(self.poll)
            self._wake.clear()
            try:
                await self.drain()
            except DatabaseUnavailable as exc:
                backoff = next_backoff(backoff)
                self._went_down(exc, backoff)
            except REDIS_ERRORS:
                backoff = 0.0  # Redis is away: nothing to take; look again next poll
            except Exception:
                backoff = next_backoff(backoff)
                log.exception("database writer failed; next try in %.0f s", backoff)
            else:
                backoff = 0.0
            with contextlib.suppress(*REDIS_ERRORS):
                await self.refresh_gauges()

    async def _wait(self, poll: float) -> None:
        """Until an update is recorded here or ``poll`` seconds passed (others may queue)."""
        timer = asyncio.get_running_loop().call_later(poll, self._wake.set)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()

    async def drain(self) -> int:
        """Write queued updates until none is left, if no other process is writing.

        Returns how many were handled. Raises ``DatabaseUnavailable`` (the lock is given
        back first) or a Redis error.
        """
        await self._flush_unsent()
        if not await self.pending.hold(self._token, self.lock_ttl):
            return 0
        handled = 0
        try:
            while batch := await self.pending.head(self.table.settings.batch_size):
                try:
                    results = await self.table.apply(batch, self._still_ours)
                except DatabaseUnavailable:
                    self.metrics.writes.labels("failed").inc(len(batch))
                    raise
                except LostLock:
                    return handled
                self._came_back()
                for result in results.values():
                    self.metrics.writes.labels(result).inc()
                await self.pending.ack(batch)
                handled += len(batch)
        finally:
            with contextlib.suppress(*REDIS_ERRORS):
                await self.pending.release(self._token)
        return handled

    async def _still_ours(self) -> bool:
        try:
            return await self.pending.hold(self._token, self.lock_ttl)
        except REDIS_ERRORS:
            return False

    async def _flush_unsent(self) -> None:
        if not self._unsent:
            return
        sent = dict(self._unsent)
        await self.pending.add(list(sent.values()))
        for session_id, update in sent.items():
            if self._unsent.get(session_id) == update:
                del self._unsent[session_id]

    async def refresh_gauges(self) -> None:
        count, age = await self.pending.stats()
        self.metrics.pending.set(count + len(self._unsent))
        self.metrics.oldest.set(age)

    def _went_down(self, exc: DatabaseUnavailable, backoff: float) -> None:
        now = time.monotonic()
        if self._failing_since is None:
            self._failing_since = now
        if now - self._last_warning >= 60:
            self._last_warning = now
            log.warning(
                "database unavailable (%s); updates kept in Redis, next try in %.0f s",
                exc,
                backoff,
            )

    def _came_back(self) -> None:
        if self._failing_since is not None:
            log.warning(
                "database is back after %.0f s; writing queued updates",
                time.monotonic() - self._failing_since,
            )
            self._failing_since = None
            self._last_warning = 0.0
