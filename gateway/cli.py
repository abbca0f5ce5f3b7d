"""``python -m gateway``: serve, inspect the settings in force, or administer a running gateway."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import logging
import signal
import sys
from collections.abc import Callable

import uvloop
from aiohttp import web

from gateway import logs
from gateway.admin import cli as admin_cli
from gateway.admin.sync_db import sync_db
from gateway.app import GatewayRunner, create_app
from gateway.processes import ChildLink, Parent
from gateway.reload import reload
from gateway.settings import (
    LOG_FORMATS,
    Settings,
    SettingsError,
    describe,
    load_settings,
    parse_processes,
    print_settings,
)

log = logging.getLogger("gateway")


async def serve(settings: Settings, load: Callable[[], Settings], child: ChildLink | None) -> int:
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
    if child is not None:
        child.watch_parent(loop, stop.set)
        child.ready()
    log.info(
        "gateway on http://%s:%d in front of %d instances",
        settings.host,
        settings.port,
        len(settings.instances),
    )
    await stop.wait()
    await asyncio.gather(*reloads, return_exceptions=True)
    await runner.cleanup()
    return 0


def _no_roll(child: ChildLink | None) -> None:
    """SIGUSR2 is for the parent; a child (reached through its group) or a lone process
    keeps serving."""
    if child is None:
        log.warning("SIGUSR2 ignored: replacing processes one by one needs --processes 2+")


def _serve(settings: Settings, load: Callable[[], Settings]) -> int:
    child = ChildLink.from_env()
    if child is None and settings.processes > 1:
        return asyncio.run(Parent(settings, load).run())
    return uvloop.run(serve(settings, load, child))


def _processes_flag(value: str) -> int:
    count = parse_processes(value)
    if not (isinstance(count, int) or str(count).isdigit()) or int(count) < 1:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of processes or auto")
    return int(count)


def settings_with(args: argparse.Namespace) -> Settings:
    """The settings in force, then the flags given."""
    settings = load_settings()
    flags = {"log_format": args.log_format, "processes": args.processes}
    return dataclasses.replace(settings, **{k: v for k, v in flags.items() if v is not None})


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json")
    parser.add_argument(
        "--processes", type=_processes_flag, help="gateway processes on the port, or auto"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the instance API (the default)")
    sub.add_parser("check-config", help="print the settings in force and where each came from")
    sub.add_parser("instances", help="the running gateway's instances (admin API)")
    sub.add_parser("distribution", help="sessions per instance and whether they are balanced")
    for name, what in (("drain", "gets no new sessions"), ("undrain", "takes new sessions again")):
        sub.add_parser(name, help=f"instance N (0-based) {what}").add_argument("index", type=int)
    sub.add_parser("reconcile", help="check every pin against the instances now")
    sync = sub.add_parser(
        "sync-db", help="make the backend's whatsapp_accounts agree with the instances"
    )
    sync.add_argument("--dry-run", action="store_true", help="report only; change nothing")
    args = parser.parse_args(argv)
    load = functools.partial(settings_with, args)
    try:
        settings = load()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logs.configure(settings.log_level, settings.log_format)
    if args.command == "check-config":
        print_settings(describe(settings))
    elif args.command == "sync-db":
        sys.exit(asyncio.run(sync_db(settings, args.dry_run)))
    elif args.command in admin_cli.COMMANDS:
        try:
            print(admin_cli.run(settings, args.command, getattr(args, "index", None)))
        except admin_cli.AdminCallFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    else:
        sys.exit(_serve(settings, load))
