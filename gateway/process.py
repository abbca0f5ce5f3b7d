"""One gateway process: everything it runs with a lifetime, built from the settings.

The application (``gateway.app``) and the admin API read it through ``GATEWAY``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from aiohttp import web

from gateway.health.checks import HealthChecker
from gateway.locate.reconcile import Reconciler
from gateway.locate.rediscovery import Rediscovery
from gateway.metrics import Metrics
from gateway.router import Router
from gateway.service.proxy import Proxy
from gateway.settings import Settings
from gateway.state.instances import Fleet
from gateway.state.store import PinStore
from gateway.upstream.client import Upstreams


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
        fleet=fleet,
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
