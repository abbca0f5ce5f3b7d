"""The application factory: the instance API, ``/metrics`` and the admin API on one app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiohttp import hdrs, web

from gateway.admin.routes import add_admin
from gateway.console.routes import PREFIX as CONSOLE_PREFIX
from gateway.console.routes import add_console_routes
from gateway.decisions.encoding import Undecodable, codings, decoded
from gateway.decisions.idempotency import keyed
from gateway.handlers.backend_relay import PREFIX as BACKEND_PREFIX
from gateway.handlers.fanout import list_sessions
from gateway.http.aiohttp_internals import EngineRunner, HandOverServer
from gateway.http.answers import Answer, Relayed
from gateway.http.entrypoint import EntryRequest, EntryServer
from gateway.http.errors import json_error
from gateway.http.headers import IDEMPOTENCY_HEADER
from gateway.http.middlewares import observe, observed
from gateway.http.requests import BODY_METHODS, ROUTE, BadRequest, Call, Incoming, read_call
from gateway.lifecycle.process import GATEWAY, METRICS, SETTINGS, Gateway, gateway_ctx
from gateway.lifecycle.reload import RELOADS, Reloads, reload_ctx
from gateway.metrics import CONTENT_TYPE_LATEST, GatewayMetrics
from gateway.shared.settings import Settings

__all__ = ["GATEWAY", "Gateway", "GatewayRunner", "create_app"]

log = logging.getLogger("gateway.http")


async def handle(request: web.Request) -> web.StreamResponse:
    """The instance API, reached through the app's router (see ``GatewayRunner``)."""
    return as_response(await serve_instance_api(request.app[GATEWAY], request))


def as_response(answer: Answer) -> web.StreamResponse:
    """What aiohttp can send: a relayed answer made a ``web.Response``."""
    return answer.response() if isinstance(answer, Relayed) else answer


async def serve_instance_api(gw: Gateway, request: Incoming) -> Answer:
    with gw.inflight:  # a reload closes the gateway it replaced only after this
        limit = gw.settings.max_body_bytes
        headers = request.headers  # (an entry request's is made on each access)
        declared = headers.get(hdrs.CONTENT_LENGTH)
        if declared and declared.isascii() and declared.isdigit() and int(declared) > limit:
            refused = json_error(413, f"Request body is over {limit} bytes")  # from the head
            refused.force_close()
            return refused
        try:
            coding = headers.get(hdrs.CONTENT_ENCODING)
            if coding is not None and codings(coding) and _json(request):
                call = await _read_encoded(request, coding, limit)
            else:
                call = await read_call(request)
        except BadRequest as exc:
            return exc.response
        except Undecodable as exc:
            return json_error(exc.status, str(exc))
        if call.method == "GET" and call.route.template == "/api/sessions":
            return await list_sessions(call, gw.fleet, gw.upstreams)
        if call.method == "GET" and call.route.template == "/health":
            primary = gw.follower.primary if gw.follower else None
            return await gw.fleet_health.answer(gw.pins.available, gw.started, primary)
        if keyed(call.method, call.route.template):
            key = headers.get(IDEMPOTENCY_HEADER)
            if key is not None:
                return await gw.idempotency.handle(call, key, gw.proxy.handle)
        return await gw.proxy.handle(call)


def _json(request: Incoming) -> bool:
    ctype = request.content_type
    return request.method in BODY_METHODS and (
        ctype == "application/json" or ctype.endswith("+json")
    )


async def _read_encoded(request: Incoming, coding: str, limit: int) -> Call:
    """A call whose compressed JSON body is read from a decoded copy and forwarded as it
    came, ``Content-Encoding`` kept (the server never decodes bodies itself)."""
    body = await request.read()
    call = await read_call(_DecodedCopy(request, decoded(body, coding, limit)))
    call.body = body
    return call


class _DecodedCopy:
    """A request whose ``read`` gives a decoded copy of its body; the rest is the request's."""

    def __init__(self, request: Incoming, copy: bytes) -> None:
        self._request, self._copy = request, copy

    def __getattr__(self, name: str) -> Any:
        return getattr(self._request, name)

    async def read(self) -> bytes:
        return self._copy

    def __getitem__(self, key: Any) -> Any:
        return self._request[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._request[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._request.get(key, default)


async def receive_webhook(request: web.Request) -> web.Response:
    gw = request.app[GATEWAY]
    with gw.inflight:
        return await gw.webhooks.handle(request)


async def call_backend(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    with gw.inflight:
        return await gw.backend.handle(request)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text; instance gauges are read from the live state at scrape time."""
    request[ROUTE] = "/metrics"
    gw, metrics = request.app[GATEWAY], request.app[METRICS]
    for instance in gw.fleet.instances:
        url = instance.url
        metrics.instance_up.labels(url).set(int(instance.up))
        metrics.instance_draining.labels(url).set(int(instance.draining))
        metrics.active_sessions.labels(url).set(instance.sessions)
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _access_log(request: web.Request) -> bool:
    return request.app[GATEWAY].settings.access_log


def create_app(settings: Settings) -> web.Application:
    metrics = GatewayMetrics()
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        middlewares=[observe(metrics, access_log=_access_log)],
    )
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app[RELOADS] = Reloads()
    app.cleanup_ctx.append(gateway_ctx)
    app.cleanup_ctx.append(reload_ctx)
    app.router.add_get("/metrics", metrics_endpoint)
    app.router.add_route("*", f"{settings.webhook_path}{{tail:.*}}", receive_webhook)
    app.router.add_route("*", f"{BACKEND_PREFIX}{{tail:.*}}", call_backend)
    add_admin(app)
    add_console_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app


class GatewayRunner(EngineRunner):
    """An ``AppRunner`` whose server sends the instance API straight to its handler.

    Its connections start as entry points (``gateway.http.entrypoint.Entry``), which read the
    instance API's plain requests themselves and answer them through
    ``serve_instance_api`` with the middleware's work done inline (``middlewares.observed``):
    no request or response machinery of aiohttp's, no router walk, no middleware chain.
    A connection whose request is the app's own (``/metrics``, the admin API, the webhook
    route) or unusual in any way is handed to aiohttp whole; there, too, the instance API
    skips the router and the middleware chain, and requests that expect a ``100 Continue``
    (which the app answers first) go through the app. Under a plain ``AppRunner`` the app
    answers every route the same, only slower.

    aiohttp's connections (``_Connection``) answer what its parser refuses in the gateway's
    JSON, quietly.
    """

    async def setup(self) -> None:
        await super().setup()
        app, server = self.app, self.server
        assert server is not None
        through_app = server.request_handler
        apps_own = ("/gateway/", CONSOLE_PREFIX, app[SETTINGS].webhook_path, BACKEND_PREFIX)
        metrics = app[METRICS]

        def access_log(_: Incoming) -> bool:
            return app[GATEWAY].settings.access_log

        # Plain functions handing back the coroutine they start: every coroutine in the
        # chain is one more frame to resume when the instance answers.
        def instance_api(request: Incoming) -> Awaitable[Answer]:
            return serve_instance_api(app[GATEWAY], request)

        def hot(path: str) -> bool:
            return path != "/metrics" and not path.startswith(apps_own)

        async def front(request: web.BaseRequest) -> web.StreamResponse:
            assert isinstance(request, web.Request)  # made by the app's request factory
            if not hot(request.rel_url.path_safe) or hdrs.EXPECT in request.headers:
                return await through_app(request)
            return as_response(await observed(metrics, access_log, request, instance_api))

        def lean(request: EntryRequest) -> Awaitable[Answer]:
            return observed(metrics, access_log, request, instance_api)

        server.request_handler = front
        if isinstance(server, EntryServer):
            server.hot, server.serve = hot, lean

    def make_server(self, made: web.Server, options: dict[str, Any]) -> HandOverServer:
        # Bodies as they came: the instance API forwards them so, Content-Encoding kept.
        options = {**options, "auto_decompress": False}
        engine = EntryServer if self.app[SETTINGS].http_engine == "fast" else HandOverServer
        extra = {"max_body": self.app[SETTINGS].max_body_bytes} if engine is EntryServer else {}
        return engine(
            made.request_handler,
            request_factory=made.request_factory,
            handler_cancellation=made.handler_cancellation,
            loop=asyncio.get_running_loop(),
            **extra,
            **options,
        )
