"""Answers made from every instance at once: the session list and the fleet's health."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.requests import Call
from gateway.service.proxy import respond
from gateway.state.instances import Fleet
from gateway.upstream.client import Reply, UpstreamError, Upstreams


async def list_sessions(call: Call, fleet: Fleet, upstreams: Upstreams) -> web.StreamResponse:
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
    return web.json_response(
        {
            "success": True,
            "sessions": sessions,
            "total": len(sessions),
            "instances_unavailable": unavailable,
        }
    )


def fleet_health(fleet: Fleet, redis_up: bool, started: float) -> web.Response:
    """``GET /health`` in the instances' own shape, summed, plus one line per instance."""
    up = fleet.up()
    totals = {
        key: sum(i.reported.get(key, 0) for i in up)
        for key in ("total", "connected", "disconnected")
    }
    body = {
        "status": "healthy" if up else "unhealthy",
        "uptime": round(time.monotonic() - started, 1),
        "sessions": totals,
        "redis": "up" if redis_up else "down",
        "instances": [
            {
                "url": i.url,
                "up": i.up,
                "draining": i.draining,
                "active": i.sessions,
            }
            for i in fleet.instances
        ],
        "timestamp": datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
    }
    return web.json_response(body, status=200 if up else 503)
