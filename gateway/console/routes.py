"""The console's routes: its page, login and logout, its files and the API's description.

Every answer carries a strict Content-Security-Policy (only this origin's scripts, styles
and calls; no frames, no inline code), and the page is never cached. The files ship with
the package: nothing is fetched from elsewhere, so the console works offline.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import Any
from urllib.parse import parse_qs

from aiohttp import web

from gateway.admin.api import ADMIN_GATE, read_body
from gateway.console import session
from gateway.console.openapi import document
from gateway.http.errors import json_error
from gateway.http.requests import ROUTE
from gateway.lifecycle.process import GATEWAY

PREFIX = "/console"
MAX_LOGIN_BODY = 4096
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self';"
    " img-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
TYPES = {
    ".js": "text/javascript",
    ".css": "text/css",
    ".html": "text/html",
    ".svg": "image/svg+xml",
}
STATIC = resources.files("gateway.console") / "static"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _file(name: str) -> bytes:
    return (STATIC / name).read_bytes()


def guarded(template: str) -> Callable[[Handler], Handler]:
    """Label the route, answer 404 while no admin token is configured, add the headers."""

    def wrap(handler: Handler) -> Handler:
        async def call(request: web.Request) -> web.StreamResponse:
            request[ROUTE] = template
            if not request.app[GATEWAY].settings.admin_token:
                response: web.StreamResponse = json_error(
                    404, "The console is off: no admin token is configured"
                )
            else:
                try:
                    response = await handler(request)
                except session.ConsoleError as exc:
                    response = exc.response
            response.headers.update(
                {
                    "Content-Security-Policy": CSP,
                    "X-Content-Type-Options": "nosniff",
                    "X-Frame-Options": "DENY",
                    "Referrer-Policy": "no-referrer",
                    "Cache-Control": "no-store",
                }
            )
            return response

        return call

    return wrap


@guarded("/console/")
async def page(request: web.Request) -> web.StreamResponse:
    """The console for a session, else the login form."""
    found = await session.current(request, request.app[GATEWAY])
    if found is None:
        return web.Response(body=_file("login.html"), content_type="text/html")
    html = _file("index.html").replace(b"{{csrf}}", found.csrf.encode())
    return web.Response(body=html, content_type="text/html")


async def _token(request: web.Request) -> str:
    """The token of a login: a JSON ``{"token": ...}`` or the form's ``token`` field."""
    raw = await read_body(request, MAX_LOGIN_BODY)
    if raw is None:
        raise session.ConsoleError(413, f"A login is at most {MAX_LOGIN_BODY} bytes")
    token: Any = None
    if request.content_type == "application/x-www-form-urlencoded":
        token = (parse_qs(raw.decode("utf-8", "replace")).get("token") or [None])[0]
    else:
        try:
            body = json.loads(raw)
        except (ValueError, RecursionError):
            raise session.ConsoleError(400, 'The body must be JSON: {"token": "..."}') from None
        token = body.get("token") if isinstance(body, dict) else None
    if not isinstance(token, str) or not token:
        raise session.ConsoleError(400, 'The admin token is missing: {"token": "..."}')
    return token


@guarded("/console/login")
async def login(request: web.Request) -> web.StreamResponse:
    if not session.same_origin(request, required=False):
        raise session.ConsoleError(403, "Cross-origin login refused")
    sid, opened = await session.login(request, request.app[GATEWAY], await _token(request))
    response: web.StreamResponse
    if request.content_type == "application/x-www-form-urlencoded":
        response = web.Response(status=303, headers={"Location": f"{PREFIX}/"})
    else:
        response = web.json_response({"success": True, "expires": opened.expires})
    session.set_cookie(response, request, sid)
    return response


@guarded("/console/logout")
async def logout(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    found = await session.current(request, gw)
    if found is not None:
        session.check_change(request, found)
        await session.logout(request, gw)
    response = web.json_response({"success": True})
    session.clear_cookie(response, request)
    return response


@guarded("/console/static/{name}")
async def static(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    kind = TYPES.get(name[name.rfind(".") :]) if "." in name else None
    if kind is None or not (STATIC / name).is_file() or "/" in name or name.startswith("."):
        return json_error(404, "No such console file")
    return web.Response(body=_file(name), content_type=kind)


@guarded("/console/openapi.json")
async def openapi(request: web.Request) -> web.StreamResponse:
    return web.json_response(document())


@guarded("/console/*")
async def unknown(request: web.Request) -> web.StreamResponse:
    return json_error(404, f"No console page {request.method} {request.path}")


async def to_page(request: web.Request) -> web.StreamResponse:
    request[ROUTE] = PREFIX
    return web.Response(status=308, headers={"Location": f"{PREFIX}/"})


def add_console_routes(app: web.Application) -> None:
    """The console, and its way into the admin API; before the instance API's catch-all."""
    app[ADMIN_GATE] = session.admin_gate
    app.router.add_get(PREFIX, to_page)
    app.router.add_get(f"{PREFIX}/", page)
    app.router.add_post(f"{PREFIX}/login", login)
    app.router.add_post(f"{PREFIX}/logout", logout)
    app.router.add_get(f"{PREFIX}/static/{{name}}", static)
    app.router.add_get(f"{PREFIX}/openapi.json", openapi)
    app.router.add_route("*", f"{PREFIX}/{{tail:.*}}", unknown)
