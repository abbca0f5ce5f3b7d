"""Answers made from every instance at once: the session list and the fleet's health."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.handlers.proxy import respond
from gateway.http.answers import Answer
from gateway.http.errors import unanswered
from gateway.http.requests import Call
from gateway.state.instances import Fleet
from gateway.upstream.client import Reply, UpstreamError, Upstreams


async def list_sessions(call: Call, fleet: Fleet, upstreams: Upstreams) -> Answer:
    """``GET /api/sessions`` of every up instance, merged; the others are named."""
    up = [i.url for i in fleet.up()]

    async def ask(url: str) -> Reply | None:
        try:
            return await upstreams.send(url, "GET", call.path_qs, call.headers)
        except UpstreamError:
            return None

    replies = dict(zip(up, await asyncio.gather(*(ask(u) for u in up)), strict=True))
    sessions: list[Any] = []
    unavailable = [i.url for i in fleet.instances if i.url not in up]
    refusals: list[tuple[str, Reply]] = []
    for url, reply in replies.items():
        body = reply.json() if reply is not None else None
        if reply is not None and reply.status == 200 and isinstance(body, dict):
            sessions.extend(
                {**s, "instance": url} if isinstance(s, dict) else s
                for s in body.get("sessions") or []
            )
        elif reply is not None and 400 <= reply.status < 500:
            refusals.append((url, reply))
        else:
            unavailable.append(url)
    if refusals and len(refusals) == len(replies):
        return respond(refusals[0][1], refusals[0][0])  # e.g. every instance said 401
    if len(unavailable) == len(fleet.instances):
        return unanswered(
            503, "No instance answered", "not-sent", instances_unavailable=unavailable
        )
    return web.json_response(
        {
            "success": True,
            "sessions": sessions,
            "total": len(sessions),
            "instances_unavailable": unavailable,
        }
    )


# A fleet health answer this young is reused: frequent monitoring costs the instances little.
HEALTH_REUSE = 1.0
SESSION_COUNTS = ("total", "connected", "disconnected")
Reports = dict[str, dict[str, Any]]  # instance URL -> its own /health body
Stamp = tuple[int, int]  # (this process's changes, sessions pinned) when asked


class FleetHealth:
    """``GET /health`` from the instances' own ``/health``, asked in parallel at the call.

    The sums are what the instances hold at that moment (so ``sessions.total`` agrees with
    ``GET /api/sessions``), not what the last periodic check saw.
    """

    def __init__(
        self,
        fleet: Fleet,
        upstreams: Upstreams,
        timeout: float,
        pinned: Callable[[], int] = lambda: 0,
    ) -> None:
        self.fleet, self.upstreams, self.timeout = fleet, upstreams, timeout
        # ``forget`` bumps the generation; ``pinned`` (how many sessions are pinned, in the
        # memory that follows every process's pins) moves with a create or delete through
        # another process of this gateway. An answer, or a round of asking, stamped before
        # either moved is from before a change, and never reused.
        self._generation = 0
        self._pinned = pinned
        self._last: tuple[float, Stamp, Reports] | None = None
        self._asking: tuple[Stamp, asyncio.Task[Reports]] | None = None

    def forget(self, *_: object) -> None:
        """Ask afresh next time: this gateway just placed or removed a session, and an answer
        from before that (kept, or still being asked for) would say it is not there."""
        self._generation += 1
        self._last = None

    async def reports(self) -> Reports:
        """Each up instance's healthy report; calls at once share one round of asking."""
        stamp = self._stamp()
        last = self._last
        if last is not None and last[1] == stamp and time.monotonic() - last[0] <= HEALTH_REUSE:
            return last[2]
        asking = self._asking
        if asking is None or asking[0] != stamp or asking[1].done():
            asking = self._asking = (stamp, asyncio.create_task(self._ask_all(stamp)))
        return await asyncio.shield(asking[1])

    def _stamp(self) -> Stamp:
        return self._generation, self._pinned()

    async def _ask_all(self, stamp: Stamp) -> Reports:
        up = [i.url for i in self.fleet.up()]
        answers = await asyncio.gather(*(self._ask(url) for url in up))
        reports = {url: body for url, body in zip(up, answers, strict=True) if body is not None}
        if stamp == self._stamp():  # else asked before a change: not kept
            self._last = (time.monotonic(), stamp, reports)
        return reports

    async def _ask(self, url: str) -> dict[str, Any] | None:
        try:
            status, body = await self.upstreams.get_json(
                url, "/health", {}, self.timeout, check=True
            )
        except UpstreamError:
            return None
        healthy = status == 200 and isinstance(body, dict) and body.get("status") != "unhealthy"
        return body if healthy else None

    async def answer(
        self, redis_up: bool, started: float, primary: str | None = None
    ) -> web.Response:
        """The instances' ``/health`` shape, summed, plus ``redis`` (and the primary in use,
        under Sentinel) and one line per instance."""
        reports = await self.reports()
        body = {
            "status": "healthy" if reports else "unhealthy",
            "uptime": round(time.monotonic() - started, 1),
            "sessions": {key: _sum(reports, "sessions", key) for key in SESSION_COUNTS},
            "memory": {
                "used": _sum(reports, "memory", "used"),
                "total": _sum(reports, "memory", "total"),
                "unit": next(
                    (r["memory"]["unit"] for r in reports.values() if _part(r, "memory")), "MB"
                ),
            },
            "redis": "up" if redis_up else "down",
            **({"redis_primary": primary} if primary else {}),
            "instances": [
                {
                    "url": i.url,
                    "up": i.up,
                    "draining": i.draining,
                    "active": i.sessions,
                    "answered": i.url in reports,
                }
                for i in self.fleet.instances
            ],
            "timestamp": datetime.now(UTC)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
        }
        return web.json_response(body, status=200 if reports else 503)


def _part(report: dict[str, Any], name: str) -> dict[str, Any]:
    part = report.get(name)
    return part if isinstance(part, dict) else {}


def _sum(reports: Reports, part: str, key: str) -> int | float:
    """The sum of one number over the reports (a missing or odd value counts 0)."""
    values = (_part(r, part).get(key) for r in reports.values())
    return sum(v for v in values if isinstance(v, int | float) and not isinstance(v, bool))
