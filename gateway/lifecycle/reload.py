"""Live reload (SIGHUP): re-read the settings and swap in a gateway built from them.

The new gateway (instances, pools, health, pins, reconciliation) is built and started while
the old one serves, then swapped in between two requests. Requests already running finish on
the old one, which is closed once they have. A pin to an instance no longer configured is
treated like one to a down instance: the session is searched for and found where it lives.
A configuration that does not load, or that changes what only a restart can change, is
refused with one log line and the running one kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import AsyncIterator, Callable

from aiohttp import web

from gateway.lifecycle.process import GATEWAY, Gateway, close_pools, start_gateway, stop_background
from gateway.lifecycle.reloadable import checked
from gateway.shared import logs
from gateway.shared.settings import Settings

log = logging.getLogger("gateway.lifecycle.reload")

# What a reload replaces; ``started`` (the process's uptime) and ``inflight`` stay.
REPLACED = (
    "settings",
    "fleet",
    "pins",
    "upstreams",
    "health",
    "rediscovery",
    "router",
    "proxy",
    "reconciler",
    "webhooks",
    "fleet_health",
    "database",
)


class Reloads:
    """One reload at a time, and the replaced gateways still finishing their requests."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.retiring: set[asyncio.Task[None]] = set()

    async def close(self) -> None:
        await asyncio.gather(*self.retiring, return_exceptions=True)


RELOADS = web.AppKey("reloads", Reloads)


async def reload_ctx(app: web.Application) -> AsyncIterator[None]:
    """Register after ``gateway_ctx``: on shutdown, replaced gateways are closed first."""
    yield
    await app[RELOADS].close()


async def reload(app: web.Application, load: Callable[[], Settings]) -> bool:
    """Re-read the settings and serve with them; False (and the old ones kept) if refused."""
    reloads, gw = app[RELOADS], app[GATEWAY]
    async with reloads.lock:
        new = checked(gw.settings, load)
        if new is None:
            return False
        if not gw.pins.available:
            log.error(
                "reload refused, the running configuration stays: Redis is unreachable, and"
                " pins made meanwhile live only in this process's memory"
            )
            return False
        try:
            fresh = await start_gateway(new, gw.metrics)
        except Exception:
            log.exception("reload failed, the running configuration stays")
            return False
        old = swap(gw, fresh)
        forget_instances(gw, old)
        logs.configure(new.log_level, new.log_format)
        task = asyncio.create_task(retire(old))
        reloads.retiring.add(task)
        task.add_done_callback(reloads.retiring.discard)
    log.info(
        "reloaded the configuration: %d instances",
        len(new.instances),
        extra={"fields": {"instances": len(new.instances)}},
    )
    return True


def swap(gw: Gateway, fresh: Gateway) -> Gateway:
    """Put ``fresh``'s parts into ``gw`` at once; returns the old parts as a gateway."""
    old = dataclasses.replace(gw)
    for name in REPLACED:
        setattr(gw, name, getattr(fresh, name))
    gw.inflight = fresh.inflight
    return old


def forget_instances(gw: Gateway, old: Gateway) -> None:
    """Drop the gauges of instances no longer configured, so no dashboard shows them."""
    for url in set(old.fleet.urls) - set(gw.fleet.urls):
        for gauge in (
            gw.metrics.instance_up,
            gw.metrics.instance_draining,
            gw.metrics.active_sessions,
        ):
            with contextlib.suppress(KeyError):
                gauge.remove(url)


async def retire(old: Gateway) -> None:
    """Close a replaced gateway once the requests it was serving are done."""
    await stop_background(old)
    await old.inflight.idle(old.longest_request)
    await close_pools(old)
