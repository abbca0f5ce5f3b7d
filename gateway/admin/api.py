"""The admin API under ``/gateway/``: look at the fleet, move pins, drain, reconcile.

Every call needs ``Authorization: Bearer <admin_token>``; with no token configured the
whole API is off (404), so a gateway is never administrable by accident. Changes go
through the pin store, so every gateway process sharing the Redis sees them.
"""

from __future__ import annotations

import hmac
import json
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from gateway.accounts.table import DatabaseUnavailable
from gateway.decisions.placement import BALANCE_LIMIT, spread
from gateway.decisions.route_table import valid_session_id
from gateway.http.errors import json_error
from gateway.http.requests import ROUTE
from gateway.lifecycle.process import GATEWAY, Gateway
from gateway.state.instances import Instance

AdminHandler = Callable[[web.Request, Gateway], Awaitable[web.Response]]
Handler = Callable[[web.Request], Awaitable[web.Response]]
# Another way in besides the Bearer token (the console's session): None lets the call
# through, else the answer refusing it.
Gate = Callable[[web.Request], Awaitable[web.Response | None]]
ADMIN_GATE = web.AppKey("admin_gate", Gate)  # type: ignore[type-abstract]


class AdminError(Exception):
    """Bad input to an admin call; carries the JSON answer to give."""

    def __init__(self, status: int, message: str, **detail: Any) -> None:
        super().__init__(message)
        self.response = json_error(status, message, **detail)


def _authorized(request: web.Request, token: str) -> bool:
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogateescape"),
        token.encode(),  # any bytes sent
    )


def admin(template: str) -> Callable[[AdminHandler], Handler]:
    """Label the route for metrics, check the token, turn ``AdminError`` into its answer."""

    def wrap(handler: AdminHandler) -> Handler:
        async def guarded(request: web.Request) -> web.Response:
            request[ROUTE] = template
            gw = request.app[GATEWAY]
            token = gw.settings.admin_token
            if not token:
                return json_error(404, "The admin API is off: no admin token is configured")
            if not _authorized(request, token):
                gate = request.app.get(ADMIN_GATE)
                refused = await gate(request) if gate else None
                if refused is not None and refused.status == 401:
                    refused.headers["WWW-Authenticate"] = "Bearer"
                if gate is None or refused is not None:
                    return refused or _unauthorized()
            try:
                return await handler(request, gw)
            except AdminError as exc:
                return exc.response

        return guarded

    return wrap


def _unauthorized() -> web.Response:
    response = json_error(401, "Missing or wrong admin token (Authorization: Bearer)")
    response.headers["WWW-Authenticate"] = "Bearer"
    return response


def query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter within ``low``..``high``; else a 400 naming it."""
    raw = request.query.get(name, "")
    if not raw:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) < 10 and low <= int(raw) <= high):
        raise AdminError(400, f"{name} must be a whole number from {low} to {high}")
    return int(raw)


MAX_ADMIN_BODY = 64 * 1024  # an admin call's JSON body, at most


async def read_body(request: web.Request, limit: int) -> bytes | None:
    """The whole body, or None once it is over ``limit`` bytes (the rest is never read)."""
    if (request.content_length or 0) > limit:
        return None
    body = bytearray()
    while len(body) <= limit and (chunk := await request.content.read(limit + 1 - len(body))):
        body += chunk
    return None if len(body) > limit else bytes(body)


async def json_body(request: web.Request, shape: str) -> Any:
    """The call's JSON body (None when it has none); a 413 or a 400 naming ``shape``."""
    raw = await read_body(request, MAX_ADMIN_BODY)
    if raw is None:
        raise AdminError(413, f"The body is over {MAX_ADMIN_BODY} bytes")
    if not raw.strip():
        return None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise AdminError(400, f"The body must be JSON: {shape}") from None


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    moment = datetime.fromtimestamp(timestamp, UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _instance(request: web.Request, gw: Gateway) -> Instance:
    raw = request.match_info["index"]
    if not (raw.isascii() and raw.isdigit()):  # "²" and "٣" are digits to str, not to int
        raise AdminError(400, "The instance index must be a whole number (0-based)")
    index = int(raw) if len(raw) < 19 else len(gw.fleet.instances)  # past any fleet
    if index >= len(gw.fleet.instances):
        raise AdminError(
            404, f"No instance {index}: {len(gw.fleet.instances)} are configured (0-based)"
        )
    return gw.fleet.instances[index]


def _session_id(request: web.Request) -> str:
    session_id = request.match_info["id"]
    if not valid_session_id(session_id):
        raise AdminError(400, "session_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    return session_id


async def _target(request: web.Request, gw: Gateway) -> str:
    """The configured instance URL named by a ``{"instance": url}`` body."""
    body = await json_body(request, '{"instance": "<url>"}')
    url = body.get("instance") if isinstance(body, dict) else None
    if not isinstance(url, str) or gw.fleet.get(url.rstrip("/")) is None:
        raise AdminError(
            400, "instance must be the URL of a configured instance", instances=gw.fleet.urls
        )
    return url.rstrip("/")


def _pin(gw: Gateway, session_id: str, url: str) -> dict[str, Any]:
    instance = gw.fleet.get(url)
    return {
        "success": True,
        "session_id": session_id,
        "instance": url,
        "index": instance.index if instance else None,
        "up": instance.up if instance else False,
        "draining": instance.draining if instance else False,
    }


@admin("/gateway/instances")
async def instances(request: web.Request, gw: Gateway) -> web.Response:
    """Each instance's state here, with what its own ``/health`` says now (sessions,
    memory; null when it did not answer)."""
    reports = await gw.fleet_health.reports()
    rows = [
        {
            "index": i.index,
            "url": i.url,
            "up": i.up,
            "draining": i.draining,
            "active": i.sessions,
            "last_check": _iso(i.last_check),
            "last_error": i.last_error,
            "last_failure": i.last_failure,
            "last_failure_at": _iso(i.last_failure_at),
            "sessions": _report(reports.get(i.url), "sessions"),
            "memory": _report(reports.get(i.url), "memory"),
        }
        for i in gw.fleet.instances
    ]
    return web.json_response({"success": True, "instances": rows})


def _report(report: Mapping[str, Any] | None, part: str) -> Any:
    value = report.get(part) if report is not None else None
    return value if isinstance(value, dict) else None


async def _database_counts(
    gw: Gateway,
) -> tuple[Mapping[str | None, int], dict[str, Any] | None]:
    """The backend's own count of active rows per instance URL, and its summary."""
    if gw.database is None:
        return {}, None
    try:
        counts = await gw.database.table.active_counts()
    except DatabaseUnavailable as exc:
        return {}, {"error": f"database unavailable ({exc})"}
    configured = set(gw.fleet.urls)
    return counts, {
        "total": sum(counts.values()),
        "no_instance": counts.get(None, 0),
        "unknown_instance": sum(n for url, n in counts.items() if url and url not in configured),
        "error": None,
    }


def _takes_new(instance: Instance, limit: int) -> str:
    """Whether placement may pick the instance (``yes``), else why not."""
    if not instance.up:
        return "down"
    if instance.draining:
        return "draining"
    return "full" if instance.sessions >= limit else "yes"


@admin("/gateway/distribution")
async def distribution(request: web.Request, gw: Gateway) -> web.Response:
    """Active sessions per instance (what placement balances), the pins on each and, with a
    database, the backend's own count (its balancer's query), so drift shows."""
    pinned = Counter(gw.pins.sessions.values())
    active = [i.sessions for i in gw.fleet.instances]
    spread_of = spread(active)
    counts, database = await _database_counts(gw)
    in_db = database is not None and database["error"] is None
    rows = [
        {
            "index": i.index,
            "url": i.url,
            "sessions": count,
            "against_mean": round(off, 4),
            "new_sessions": _takes_new(i, gw.router.limit),
            "pinned": pinned[i.url],
            "database": counts.get(i.url, 0) if in_db else None,
        }
        for i, count, off in zip(gw.fleet.instances, active, spread_of.against_mean, strict=True)
    ]
    next_url = gw.router.next_placement()
    following = gw.fleet.get(next_url) if next_url is not None else None
    return web.json_response(
        {
            "success": True,
            "instances": rows,
            "total": sum(active),
            "pinned": len(gw.pins.sessions),
            "mean": spread_of.mean,
            "spread": round(spread_of.spread, 4),
            "balance_limit": BALANCE_LIMIT,
            "balanced": spread_of.balanced,
            "next": None if following is None else {"index": following.index, "url": next_url},
            "max_sessions_per_instance": gw.router.limit,
            "database": database,
        }
    )


@admin("/gateway/sessions/{id}")
async def get_session(request: web.Request, gw: Gateway) -> web.Response:
    session_id = _session_id(request)
    url = await gw.pins.session(session_id)
    if url is None:
        raise AdminError(404, "The session has no pin", session_id=session_id)
    return web.json_response(_pin(gw, session_id, url))


@admin("/gateway/sessions/{id}")
async def put_session(request: web.Request, gw: Gateway) -> web.Response:
    """Move a pin by hand, e.g. after moving a session between instances outside the gateway."""
    session_id = _session_id(request)
    url = await _target(request, gw)
    previous = await gw.pins.session(session_id)
    await gw.pins.pin_session(session_id, url, source="admin")
    return web.json_response(_pin(gw, session_id, url) | {"previous": previous})


async def _set_draining(request: web.Request, gw: Gateway, draining: bool) -> web.Response:
    instance = _instance(request, gw)
    await gw.pins.set_draining(instance.url, draining)
    return web.json_response(
        {
            "success": True,
            "index": instance.index,
            "url": instance.url,
            "draining": draining,
            "active": instance.sessions,
        }
    )


@admin("/gateway/instances/{index}/drain")
async def drain(request: web.Request, gw: Gateway) -> web.Response:
    """The instance keeps its sessions but gets no new ones (the router skips it)."""
    return await _set_draining(request, gw, True)


@admin("/gateway/instances/{index}/undrain")
async def undrain(request: web.Request, gw: Gateway) -> web.Response:
    return await _set_draining(request, gw, False)


@admin("/gateway/reconcile")
async def reconcile(request: web.Request, gw: Gateway) -> web.Response:
    outcome = await gw.reconciler.run()
    return web.json_response(
        {
            "success": True,
            "corrections": [c.as_json() for c in outcome.corrections],
            "instances_unanswered": outcome.unanswered,
        }
    )


@admin("/gateway/*")
async def unknown(request: web.Request, gw: Gateway) -> web.Response:
    """Unknown admin calls are answered here, never forwarded to an instance."""
    raise AdminError(404, f"No admin call {request.method} {request.path}")


def add_admin_routes(app: web.Application) -> None:
    """Register the admin API; call before the catch-all route, which would take its paths."""
    app.router.add_get("/gateway/instances", instances)
    app.router.add_get("/gateway/distribution", distribution)
    app.router.add_get("/gateway/sessions/{id}", get_session)
    app.router.add_put("/gateway/sessions/{id}", put_session)
    app.router.add_post("/gateway/instances/{index}/drain", drain)
    app.router.add_post("/gateway/instances/{index}/undrain", undrain)
    app.router.add_post("/gateway/reconcile", reconcile)
    app.router.add_route("*", "/gateway/{tail:.*}", unknown)
