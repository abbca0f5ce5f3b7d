"""Reconciliation: every pin checked against the instances' own session lists.

Inline rediscovery fixes a moved session when a request for it arrives; reconciliation
fixes the rest, so that after every instance restarted with its sessions shuffled all pins
are right within one ``reconcile_interval``, even for sessions nobody asked for (and the
backend's lost ``session_ready`` webhooks no longer matter). The decision is a pure
function (``decisions.corrections``); listing and applying are the I/O around it. With a
database configured, each run's listing also checks the backend's table (``accounts``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from gateway.decisions.corrections import Correction, correction_parts, slices
from gateway.decisions.route_table import valid_session_id
from gateway.locate.account_sync import TableCheck
from gateway.metrics import GatewayMetrics
from gateway.shared.tasks import cancel_and_wait, every, paced
from gateway.state.instances import Fleet
from gateway.state.store import PinStore
from gateway.upstream.client import UpstreamError, Upstreams

log = logging.getLogger("gateway.reconcile")


@dataclass(frozen=True)
class ReconcileResult:
    """What one run changed, and which instances it could not list (no pin removed then)."""

    corrections: list[Correction]
    unanswered: list[str]


@dataclass
class Listing:
    """Sessions of the instances that answered, in configured order, and their workspaces."""

    sessions: dict[str, list[str]]
    workspaces: dict[str, str]
    unanswered: list[str]


async def _parse(body: Any) -> tuple[list[str], dict[str, str]] | None:
    """Session ids and workspace ids of one ``GET /api/sessions`` body; None if malformed.

    A slice at a time: an instance may list a quarter of a million sessions.
    """
    if not isinstance(body, dict) or not isinstance(body.get("sessions"), list):
        return None
    session_ids: list[str] = []
    workspaces: dict[str, str] = {}
    async for part in paced(slices(body["sessions"])):
        for entry in part:
            sid = entry.get("session_id") if isinstance(entry, dict) else None
            if not isinstance(sid, str) or not valid_session_id(sid):
                continue
            session_ids.append(sid)
            workspace = entry.get("workspace_id")
            if isinstance(workspace, int | str) and not isinstance(workspace, bool):
                workspaces[sid] = str(workspace)
    return session_ids, workspaces


async def list_instances(
    upstreams: Upstreams,
    urls: Sequence[str],
    skipped: Sequence[str],
    params: Mapping[str, str],
    timeout: float,
) -> Listing:
    """``GET /api/sessions`` of every instance in ``urls`` at once; ``skipped`` are not asked."""

    async def ask(url: str) -> tuple[list[str], dict[str, str]] | None:
        try:
            status, body = await upstreams.get_json(url, "/api/sessions", params, timeout)
        except UpstreamError as exc:
            log.warning("cannot list the sessions of %s (%s)", url, exc.kind)
            return None
        parsed = await _parse(body) if status == 200 else None
        if parsed is None:
            log.warning("cannot list the sessions of %s (answered %d)", url, status)
        return parsed

    answers = await asyncio.gather(*(ask(url) for url in urls))
    listing = Listing({}, {}, list(skipped))
    for url, answer in zip(urls, answers, strict=True):
        if answer is None:
            listing.unanswered.append(url)
            continue
        listing.sessions[url] = answer[0]
        listing.workspaces.update(answer[1])
    return listing


class Reconciler:
    """Runs reconciliation at start-up and every ``interval``; one run at a time."""

    def __init__(
        self,
        fleet: Fleet,
        upstreams: Upstreams,
        pins: PinStore,
        metrics: GatewayMetrics,
        *,
        api_token: str,
        interval: float,
        timeout: float,
        table: TableCheck | None = None,
    ) -> None:
        self.fleet, self.upstreams, self.pins, self.metrics = fleet, upstreams, pins, metrics
        self.table = table
        self.params = {"api_key": api_token} if api_token else {}
        self.interval, self.timeout = interval, timeout
        self._current: asyncio.Task[ReconcileResult] | None = None
        self._loop_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Reconcile once before serving (health has run), then every interval."""
        await self._run_logged()
        self._loop_task = asyncio.create_task(every(self.interval, self._run_logged))

    async def close(self) -> None:
        await cancel_and_wait([self._loop_task, self._current])
        if self.table is not None:
            await self.table.close()

    async def _run_logged(self) -> None:
        """A periodic run that fails is logged and retried next interval, never fatal."""
        try:
            await self.run()
        except Exception:
            log.exception("reconciliation failed")

    async def run(self) -> ReconcileResult:
        """Reconcile now; a call during a run shares that run rather than starting another."""
        if self._current is None or self._current.done():
            self._current = asyncio.create_task(self._reconcile())
        return await asyncio.shield(self._current)

    async def _reconcile(self) -> ReconcileResult:
        # Pins are read before listing: a pin made after that (a new session, a
        # rediscovery) is newer than the lists and is left alone by ``_apply``.
        snapshot = self.pins.sessions.copy()
        listing = await self._list_all()
        complete = len(listing.sessions) == len(self.fleet.instances)
        changes = [
            change
            async for part in paced(correction_parts(snapshot, listing.sessions, complete))
            for change in part
        ]
        applied = [change for change in changes if await self._apply(change, listing.workspaces)]
        for url, session_ids in listing.sessions.items():
            await self.pins.set_active(url, len(session_ids))
        if self.table is not None:
            self.table.schedule(listing.sessions, self.pins.sessions.copy())
        if applied:
            log.warning("reconciliation corrected %d pin(s)", len(applied))
        return ReconcileResult(applied, listing.unanswered)

    async def _list_all(self) -> Listing:
        down = [i.url for i in self.fleet.instances if not i.up]
        up = [i.url for i in self.fleet.up()]
        return await list_instances(self.upstreams, up, down, self.params, self.timeout)

    async def _apply(self, change: Correction, workspaces: Mapping[str, str]) -> bool:
        """Make one change unless the pin moved meanwhile; whether it was made."""
        if self.pins.sessions.get(change.session_id) != change.old:
            return False
        if change.new is None:
            await self.pins.unpin_session(change.session_id, source="reconcile")
        else:
            workspace = workspaces.get(change.session_id) if change.kind == "added" else None
            if workspace is not None and await self.pins.workspace(workspace) is not None:
                workspace = None  # the workspace already has an instance: keep it
            await self.pins.pin_session(
                change.session_id, change.new, workspace, source="reconcile"
            )
        self.metrics.reconcile_corrections.labels(change.kind).inc()
        return True
