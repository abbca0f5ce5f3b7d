"""The sessions, searched across the instances' own lists and the pins (for the console)."""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from gateway.admin.api import AdminError, admin, query_int
from gateway.lifecycle.process import Gateway
from gateway.upstream.client import UpstreamError

MAX_SESSIONS_SHOWN = 1000


async def _listed(gw: Gateway, url: str) -> list[dict[str, Any]] | None:
    """One instance's own session list, asked with the gateway's API key."""
    token = gw.settings.laravel_api_token
    params = {"api_key": token} if token else {}
    try:
        status, body = await gw.upstreams.get_json(
            url, "/api/sessions", params, gw.settings.health_timeout
        )
    except UpstreamError:
        return None
    if status != 200 or not isinstance(body, dict) or not isinstance(body.get("sessions"), list):
        return None
    return [s for s in body["sessions"] if isinstance(s, dict)]


@admin("/gateway/sessions")
async def sessions(request: web.Request, gw: Gateway) -> web.Response:
    """Sessions the instances hold and those pinned, searched by id (a part of it),
    workspace, instance (URL or index) or status."""
    q = request.query.get("q", "").strip()
    workspace = request.query.get("workspace", "").strip()
    where = request.query.get("instance", "").strip()
    status = request.query.get("status", "").strip()
    limit = query_int(request, "limit", 100, 1, MAX_SESSIONS_SHOWN)
    if where.isascii() and where.isdigit():
        if int(where[:6]) >= len(gw.fleet.instances):
            raise AdminError(404, f"No instance {where}: {len(gw.fleet.instances)} configured")
        where = gw.fleet.instances[int(where)].url
    up = [i.url for i in gw.fleet.up()]
    lists = dict(zip(up, await asyncio.gather(*(_listed(gw, u) for u in up)), strict=True))
    rows: dict[str, dict[str, Any]] = {}
    for url, listed in lists.items():
        for s in listed or []:
            sid = str(s.get("session_id", ""))
            rows[sid] = {
                "session_id": sid,
                "workspace_id": s.get("workspace_id"),
                "status": s.get("status"),
                "instance": url,
                "pinned": None,
            }
    for sid, url in gw.pins.sessions.items():
        rows.setdefault(
            sid,
            {"session_id": sid, "workspace_id": None, "status": None, "instance": None},
        )["pinned"] = url

    def wanted(row: dict[str, Any]) -> bool:
        return (
            (not q or q.lower() in row["session_id"].lower())
            and (not workspace or str(row["workspace_id"]) == workspace)
            and (not where or where.rstrip("/") in (row["instance"], row["pinned"]))
            and (not status or row["status"] == status)
        )

    found = sorted((r for r in rows.values() if wanted(r)), key=lambda r: r["session_id"])
    return web.json_response(
        {
            "success": True,
            "sessions": found[:limit],
            "total": len(found),
            "instances_unavailable": [
                i.url for i in gw.fleet.instances if lists.get(i.url) is None
            ],
        }
    )
