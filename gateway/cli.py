"""``python -m gateway``: serve, inspect the settings in force, or administer a running gateway."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import functools
import sys
from collections.abc import Callable

from gateway.admin import cli as admin_cli
from gateway.run.parent import ChildLink, Parent
from gateway.shared import logs
from gateway.shared.checks import parse_processes
from gateway.shared.laravel.prefixes import check_prefix
from gateway.shared.loader import describe, load_settings, print_settings
from gateway.shared.redis_url import primary_line
from gateway.shared.settings import LOG_FORMATS, Settings, SettingsError


def _serve(settings: Settings, load: Callable[[], Settings]) -> int:
    child = ChildLink.from_env()
    if child is None and settings.processes > 1:
        return asyncio.run(Parent(settings, load).run())
    # Imported only here, as is sync-db's code: the parent serves nothing, and the serving
    # code's imports (aiohttp, redis, uvloop) would cost it about as much CPU again as each
    # child's own start, which after a crash is time with nothing serving.
    from gateway.run.server import serve

    return serve(settings, load, child)


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


DESCRIPTION = (
    "Serve the instance API (the default), print the settings in force, or administer a"
    " running gateway (the admin commands need GATEWAY_ADMIN_TOKEN)."
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=DESCRIPTION)
    parser.add_argument("--log-format", choices=LOG_FORMATS, help="text (default) or json")
    parser.add_argument(
        "--processes", type=_processes_flag, help="gateway processes on the port, or auto"
    )
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the instance API (the default)")
    sub.add_parser("check-config", help="print the settings in force and where each came from")
    sub.add_parser("instances", help="the running gateway's instances (admin API)")
    sub.add_parser(
        "distribution", help="sessions per instance against the mean, and where the next goes"
    )
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
        print(asyncio.run(primary_line(settings.redis_url)))
        warning = asyncio.run(check_prefix(settings.redis_url, settings.redis_prefix))
        if warning:
            print(f"warning: {warning}")
    elif args.command == "sync-db":
        from gateway.admin.sync_db import sync_db

        sys.exit(asyncio.run(sync_db(settings, args.dry_run)))
    elif args.command in admin_cli.COMMANDS:
        try:
            print(admin_cli.run(settings, args.command, getattr(args, "index", None)))
        except admin_cli.AdminCallFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    else:
        sys.exit(_serve(settings, load))
