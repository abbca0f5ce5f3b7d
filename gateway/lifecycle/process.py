"""One gateway process: everything it runs with a lifetime, built from the settings.

The application (``gateway.app``) and the admin API read it through ``GATEWAY``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, field

from aiohttp import web

from gateway.accounts.writer import Writer, open_writer
from gateway.decisions.view import BackendView
from gateway.handlers.backend_relay import BackendRelay
from gateway.handlers.fanout import FleetHealth
from gateway.handlers.idempotency import Idempotency
from gateway.handlers.proxy import Proxy
from gateway.handlers.webhook_receiver import Holders, Receiver
from gateway.health.checks import HealthChecker
from gateway.locate.account_sync import TableCheck
from gateway.locate.reconcile import Reconciler
from gateway.locate.rediscovery import Rediscovery
from gateway.metrics import GatewayMetrics
from gateway.routing.router import Router
from gateway.shared.outbox import Outbox
from gateway.shared.redis_url import SwitchFollower, redis_client
from gateway.shared.settings import Settings
from gateway.state.idempotency import IdempotencyStore
from gateway.state.instances import Fleet
from gateway.state.pins import PinChange, PinListener
from gateway.state.store import PinStore
from gateway.upstream.client import Upstreams


class InFlight:
    """Requests running on one gateway, so a replaced one is closed only once they are done."""

    def __init__(self) -> None:
        self.count = 0
        self._idle: asyncio.Future[None] | None = None  # made when someone waits

    def __enter__(self) -> None:
        self.count += 1

    def __exit__(self, *exc: object) -> None:
        self.count -= 1
        if self.count == 0 and self._idle is not None and not self._idle.done():
            self._idle.set_result(None)

    async def idle(self, timeout: float) -> None:
        """Return once no request runs, or after ``timeout`` seconds."""
        if self.count == 0:
            return
        if self._idle is None or self._idle.done():
            self._idle = asyncio.get_running_loop().create_future()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._idle), timeout)


@dataclass
class Gateway:
    """Everything with a lifetime that one gateway process runs."""

    settings: Settings
    fleet: Fleet
    metrics: GatewayMetrics
    pins: PinStore
    upstreams: Upstreams
    health: HealthChecker
    rediscovery: Rediscovery
    router: Router
    proxy: Proxy
    reconciler: Reconciler
    webhooks: Receiver
    fleet_health: FleetHealth
    idempotency: Idempotency
    backend: BackendRelay
    started: float
    database: Writer | None = None  # the backend's table, when ``mysql_dsn`` is set
    inflight: InFlight = field(default_factory=InFlight)
    follower: SwitchFollower | None = None  # Sentinel's promotions, when redis_url names it

    @property
    def longest_request(self) -> float:
        """The longest a request can keep using this gateway's pools."""
        return self.settings.connect_timeout + self.settings.read_timeout + 5


SETTINGS = web.AppKey("settings", Settings)
METRICS = web.AppKey("metrics", GatewayMetrics)
GATEWAY = web.AppKey("gateway", Gateway)


def write_behind(writer: Writer) -> PinListener:
    """Every session pinned goes to the backend's table; an unpin leaves its row alone."""

    def listener(change: PinChange) -> Awaitable[None] | None:
        return writer.record(change.session_id, change.url) if change.url else None

    return listener


async def start_gateway(s: Settings, metrics: GatewayMetrics) -> Gateway:
    """Build a gateway from settings and start it: pins loaded, instances checked once."""
    fleet = Fleet.from_urls(s.instances)
    pins = PinStore(
        s.redis_url,
        s.key_prefix,
        s.redis_timeout,
        reservation_ttl=s.connect_timeout + s.read_timeout + 5,
        metrics=metrics,
        fleet=fleet,
    )
    upstreams = Upstreams.for_settings(s, metrics)
    health = HealthChecker(
        fleet,
        upstreams,
        pins,
        metrics,
        interval=s.health_interval,
        down_interval=s.health_down_interval,
        timeout=s.health_timeout,
        fall=s.health_fall,
        rise=s.health_rise,
    )
    rediscovery = Rediscovery(
        upstreams,
        pins,
        api_token=s.laravel_api_token,
        timeout=s.health_timeout,
        negative_ttl=s.rediscovery_negative_ttl,
        concurrency=s.rediscovery_concurrency,
        metrics=metrics,
    )
    router = Router(fleet, pins, s.placement, s.max_sessions_per_instance)
    proxy = Proxy(
        router, pins, upstreams, health, rediscovery, metrics, s.max_sessions_per_instance
    )
    database = open_writer(s, metrics.database()) if s.mysql_dsn else None
    reconciler = Reconciler(
        fleet,
        upstreams,
        pins,
        metrics,
        api_token=s.laravel_api_token,
        interval=s.reconcile_interval,
        timeout=s.health_timeout,
        table=TableCheck(database, s.instances) if database else None,
    )
    # The webhook route's own Redis client: an event is never queued behind a pin's call.
    webhook_redis = redis_client(
        s.redis_url, socket_timeout=s.redis_timeout, socket_connect_timeout=s.redis_timeout
    )
    webhooks = Receiver(
        secret=s.hmac_secret,
        prefix=s.webhook_path,
        instances=s.instances,
        dedup_window=s.webhook_dedup_window,
        max_body=s.webhook_max_body_bytes,
        timeout=s.redis_timeout,
        outbox=Outbox(webhook_redis, s.key_prefix),
        pins=pins,
        metrics=metrics,
        holds=Holders(upstreams, s.laravel_api_token, s.health_timeout).holds,
        min_replicas=s.redis_min_replicas,
        view=BackendView(s.instances, s.shown_url),
    )
    clients = [pins.link.redis, pins.link.subscriber, webhook_redis]
    if database is not None:
        clients.append(database.pending.redis)
    follower = SwitchFollower(s.redis_url, clients)
    follower.start()
    if database is not None:
        pins.on_change(write_behind(database))
        await database.start()
    await pins.start()
    await health.start()
    await reconciler.start()
    fleet_health = FleetHealth(
        fleet, upstreams, s.health_timeout, pinned=lambda: len(pins.sessions)
    )
    pins.on_change(fleet_health.forget)  # this process's changes (the others': ``pinned``)
    proxy.on_sessions_changed(fleet_health.forget)  # also those that move no pin
    return Gateway(
        settings=s,
        fleet=fleet,
        metrics=metrics,
        pins=pins,
        upstreams=upstreams,
        health=health,
        rediscovery=rediscovery,
        router=router,
        proxy=proxy,
        reconciler=reconciler,
        webhooks=webhooks,
        fleet_health=fleet_health,
        idempotency=Idempotency(
            IdempotencyStore(
                pins.link, s.idempotency_ttl, s.idempotency_max_body_bytes, s.redis_min_replicas
            ),
            metrics,
        ),
        backend=BackendRelay(
            backend_url=s.backend_url.rstrip("/"),
            secret=s.hmac_secret,
            api_token=s.laravel_api_token,
            timeout=s.read_timeout,
            max_body=s.webhook_max_body_bytes,
            metrics=metrics,
        ),
        started=time.monotonic(),
        database=database,
        follower=follower,
    )


async def stop_background(gw: Gateway) -> None:
    """Stop what a gateway does on its own (checks, reconciliation); requests still work."""
    await gw.reconciler.close()
    await gw.health.close()


async def close_pools(gw: Gateway) -> None:
    """Close the connections to the instances, to Redis and to the database."""
    with contextlib.suppress(TimeoutError):  # first requests settle their keys
        await asyncio.wait_for(gw.idempotency.close(), gw.longest_request)
    if gw.follower is not None:
        await gw.follower.close()
    await gw.webhooks.outbox.redis.aclose()
    await gw.backend.close()
    await gw.upstreams.close()
    await gw.pins.close()
    if gw.database is not None:
        await gw.database.close()


async def stop_gateway(gw: Gateway) -> None:
    await stop_background(gw)
    await close_pools(gw)


async def gateway_ctx(app: web.Application) -> AsyncIterator[None]:
    app[GATEWAY] = await start_gateway(app[SETTINGS], app[METRICS])
    yield
    await stop_gateway(app[GATEWAY])
    app[METRICS].flush()  # what was tallied since the last flush
