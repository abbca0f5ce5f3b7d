"""One gateway process serving: on its port, or on the socket its parent gave it.

It serves until SIGTERM or SIGINT (or, as a child, until its parent is gone), reloads the
settings on SIGHUP, and lets the requests in flight finish before it exits.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import signal
from collections.abc import Callable

import uvloop
from aiohttp import web

from gateway.app import GatewayRunner, create_app
from gateway.lifecycle.reload import reload
from gateway.run.parent import ChildLink
from gateway.shared.limits import raise_open_files
from gateway.shared.settings import Settings

log = logging.getLogger("gateway")
ACCEPTED_DRAIN = 0.5  # seconds between the last accept and closing idle connections
# Container allocations between two collections of the young generation. A proxied request
# makes a few dozen (futures, frames, lists), nearly all freed by reference counting before
# any collection sees them; at Python's default of 700, collections mostly walk the requests
# in flight again and again.
GC_YOUNG = 20_000


def serve(settings: Settings, load: Callable[[], Settings], child: ChildLink | None) -> int:
    """Serve on uvloop; the exit code."""
    raise_open_files()
    return uvloop.run(_serve(settings, load, child))


async def _serve(settings: Settings, load: Callable[[], Settings], child: ChildLink | None) -> int:
    """Serve until SIGTERM or SIGINT, reloading on SIGHUP; requests in flight finish first."""
    app = create_app(settings)
    runner = GatewayRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, child.listening_socket())
        if child is not None
        else web.TCPSite(runner, settings.host, settings.port)
    )
    try:
        await site.start()
    except OSError as exc:
        log.error("cannot listen on %s:%d: %s", settings.host, settings.port, exc.strerror)
        await runner.cleanup()
        return 1
    _settle_heap()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reloads: set[asyncio.Task[bool]] = set()

    def on_hup() -> None:
        task = asyncio.create_task(reload(app, load))
        reloads.add(task)
        task.add_done_callback(reloads.discard)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, on_hup)
    loop.add_signal_handler(signal.SIGUSR2, functools.partial(_no_roll, child))
    log.info(
        "gateway on http://%s:%d in front of %d instances",
        settings.host,
        settings.port,
        len(settings.instances),
    )
    if settings.backend_sees == "gateway" and not settings.public_url:
        log.warning(
            "public_url is not set: the backend is told sessions live at %s (the listen"
            " address); set GATEWAY_PUBLIC_URL (or WHATSAPP_NODEJS_URL) to the URL it calls",
            settings.shown_url,
        )
    if child is not None:
        child.watch_parent(loop, stop.set)
        child.ready()  # after its line: the parent's line naming the children comes last
    await stop.wait()
    # Accept nothing more, and let requests that just arrived start before aiohttp closes
    # the connections that look idle (several processes accept from one socket, so one
    # may be in that instant when it is told to stop).
    await site.stop()
    await asyncio.sleep(ACCEPTED_DRAIN)
    await asyncio.gather(*reloads, return_exceptions=True)
    await runner.cleanup()
    return 0


def _settle_heap() -> None:
    """Keep what start-up built (modules, settings, the pins loaded) out of every later
    collection, and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG, *gc.get_threshold()[1:])


def _no_roll(child: ChildLink | None) -> None:
    """SIGUSR2 is for the parent; a child (reached through its group) or a lone process
    keeps serving."""
    if child is None:
        log.warning("SIGUSR2 ignored: replacing processes one by one needs --processes 2+")
