"""Middlewares: request ids, JSON errors instead of tracebacks, request metrics, an access
log, and no request target but a plain path."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.decisions.paths import origin_form
from gateway.http.answers import Answer
from gateway.http.errors import OUTCOME_HEADER, json_error
from gateway.http.headers import INSTANCE_HEADER
from gateway.http.requests import REQUEST_ID, ROUTE, Incoming, request_id
from gateway.metrics import GatewayMetrics

log = logging.getLogger("gateway")
access = logging.getLogger("gateway.access")

R = TypeVar("R", bound=Incoming)  # an aiohttp request, or one the entry point read
A = TypeVar("A", bound=Answer)  # an aiohttp response, or an instance's answer relayed

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def outcome(response: Answer) -> str:
    """What became of a request, in one word, for the access log."""
    marked = response.headers.get(OUTCOME_HEADER)
    if marked:
        return marked
    if response.status < 400:
        return "ok"
    return "client_error" if response.status < 500 else "error"


def observe(metrics: GatewayMetrics, access_log: Callable[[web.Request], bool]) -> web.middleware:
    """Tag each request with an id, answer every failure in JSON, count, time and log it.

    ``access_log`` says whether a request gets its access-log line (the setting may change
    on a reload).
    """

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await observed(metrics, access_log, request, handler)

    return middleware


async def observed(
    metrics: GatewayMetrics,
    access_log: Callable[[R], bool],
    request: R,
    handler: Callable[[R], Awaitable[A]],
) -> A | web.Response:
    """``handler``'s answer, tagged, counted, timed and logged: the middleware's work, also
    done inline on the proxied path (``gateway.app.GatewayRunner``)."""
    request[REQUEST_ID] = request_id(request)
    started = time.perf_counter()
    response: A | web.Response
    try:
        if origin_form(request.raw_path):
            response = await handler(request)
        else:  # a URL or an authority: never reach a host the caller names
            response = json_error(400, "The request target must be a path (/...)")
    except web.HTTPException as exc:  # e.g. 413 from the body size limit
        response = json_error(exc.status, exc.reason)
    except Exception:
        log.exception("unexpected error on %s", request.get(ROUTE, "other"))
        response = json_error(500, "Internal gateway error")
    response.headers["X-Request-ID"] = request[REQUEST_ID]
    route = request.get(ROUTE, "other")
    method = request.method if request.method in METHODS else "other"
    instance = response.headers.get(INSTANCE_HEADER, "none")
    took = time.perf_counter() - started
    metrics.request_done(route, method, response.status, instance, took)
    if access.isEnabledFor(logging.INFO) and access_log(request):
        fields = {
            "request_id": request[REQUEST_ID][:128],
            "method": method,
            "route": route,
            "status": response.status,
            "instance": instance,
            "duration_ms": round(took * 1000, 2),
            "outcome": outcome(response),
        }
        access.info("%s %s %d", method, route, response.status, extra={"fields": fields})
    return response
