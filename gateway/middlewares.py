"""Middlewares: request ids, JSON errors instead of tracebacks, request metrics, and
no request target but a plain path."""

from __future__ import annotations

import logging
import time

from aiohttp import web
from aiohttp.typedefs import Handler

from gateway.decisions.paths import origin_form
from gateway.errors import json_error
from gateway.headers import INSTANCE_HEADER
from gateway.metrics import Metrics
from gateway.requests import REQUEST_ID, ROUTE, request_id

log = logging.getLogger("gateway")

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def observe(metrics: Metrics) -> web.middleware:
    """Tag each request with an id, answer every failure in JSON, count and time it."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[REQUEST_ID] = request_id(request)
        started = time.perf_counter()
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
        metrics.requests.labels(route, method, str(response.status), instance).inc()
        metrics.latency.labels(route, method).observe(time.perf_counter() - started)
        return response

    return middleware
