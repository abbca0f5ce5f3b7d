"""The application factory: wires settings, state, routing and forwarding together."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.entrypoint import ROUTE, BadRequest, read_call
from gateway.health.checks import HealthChecker
from gateway.health.reconcile import Reconciler
from gateway.health.rediscovery import Rediscovery
from gateway.instances import Fleet
from gateway.metrics import CONTENT_TYPE_LATEST, Metrics
from gateway.middlewares import observe
from gateway.router.router import Router
from gateway.service.fanout import fleet_health, list_sessions
from gateway.service.proxy import Proxy
from gateway.service.upstream import Upstreams
from gateway.settings import Settings
from gateway.state.pins import PinStore


@dataclass
class Gateway:
    """Everything with a lifetime that one gateway process runs."""

    settings: Settings
    fleet: Fleet
    metrics: Metrics
    pins: PinStore
    upstreams: Upstreams
    health: HealthChecker
    rediscovery: Rediscovery
    router: Router
    proxy: Proxy
    reconciler: Reconciler
    started: float


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", Metrics)
GATEWAY = web.AppKey("gateway", Gateway)


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    s, metrics = app[SETTINGS], app[METRICS]
    fleet = Fleet.from_urls(s.instances)
    pins = PinStore(
        s.redis_url,
        s.key_prefix,
        s.redis_timeout,
        reservation_ttl=s.connect_timeout + s.read_timeout + 5,
        metrics=metrics,
    )
    upstreams = Upstreams(s.instances, s.connect_timeout, s.read_timeout, metrics)
    health = HealthChecker(
        fleet,
        upstreams,
        pins,
        metrics,
        interval=s.health_interval,
        timeout=s.health_timeout,
        fall=s.health_fall,
        rise=s.health_rise,
    )
    rediscovery = Rediscovery(upstreams, pins, s.laravel_api_token, s.health_timeout, metrics)
    router = Router(fleet, pins, s.placement, s.max_sessions_per_instance)
    proxy = Proxy(
        router, pins, upstreams, health, rediscovery, metrics, s.max_sessions_per_instance
    )
    reconciler = Reconciler(
        fleet,
        upstreams,
        pins,
        metrics,
        api_token=s.laravel_api_token,
        interval=s.reconcile_interval,
        timeout=s.health_timeout,
    )
    await pins.start()
    await health.start()
    await reconciler.start()
    app[GATEWAY] = Gateway(
        s,
        fleet,
        metrics,
        pins,
        upstreams,
        health,
        rediscovery,
        router,
        proxy,
        reconciler,
        time.monotonic(),
    )
    yield
    await reconciler.close()
    await health.close()
    await upstreams.close()
    await pins.close()


async def handle(request: web.Request) -> web.StreamResponse:
    gw = request.app[GATEWAY]
    try:
        call = await read_call(request)
    except BadRequest as exc:
        return exc.response
    if call.method == "GET" and call.route.template == "/api/sessions":
        return await list_sessions(call, gw.fleet, gw.upstreams)
    if call.method == "GET" and call.route.template == "/health":
        return fleet_health(gw.fleet, gw.pins, gw.started)
    return await gw.proxy.handle(call)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus text; instance gauges are read from the live state at scrape time."""
    request[ROUTE] = "/metrics"
    gw, metrics = request.app[GATEWAY], request.app[METRICS]
    for instance in gw.fleet.instances:
        url = instance.url
        metrics.instance_up.labels(url).set(int(instance.up))
        metrics.instance_draining.labels(url).set(int(url in gw.pins.draining))
        metrics.active_sessions.labels(url).set(gw.pins.active.get(url, 0))
    body = metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def create_app(settings: Settings) -> web.Application:
    metrics = Metrics()
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[observe(metrics)])
    app[SETTINGS] = settings
    app[METRICS] = metrics
    app.cleanup_ctx.append(gateway_ctx)
    app.router.add_get("/metrics", metrics_endpoint)
    from gateway.admin.api import add_admin_routes  # it reads app[GATEWAY], defined here

    add_admin_routes(app)
    app.router.add_route("*", "/{tail:.*}", handle)
    return app
