"""``python -m gateway``: serve, inspect the settings in force, or administer a running gateway."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from gateway.admin import cli as admin_cli
from gateway.app import create_app
from gateway.settings import Settings, SettingsError, describe, load_settings, print_settings


def _serve(settings: Settings) -> None:
    logging.getLogger("gateway").info(
        "gateway on http://%s:%d in front of %d instances",
        settings.host,
        settings.port,
        len(settings.instances),
    )
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log=None,
        print=None,
        loop=uvloop.new_event_loop(),
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the instance API (the default)")
    sub.add_parser("check-config", help="print the settings in force and where each came from")
    sub.add_parser("instances", help="the running gateway's instances (admin API)")
    sub.add_parser("distribution", help="sessions per instance and whether they are balanced")
    for name, what in (("drain", "gets no new sessions"), ("undrain", "takes new sessions again")):
        sub.add_parser(name, help=f"instance N (0-based) {what}").add_argument("index", type=int)
    sub.add_parser("reconcile", help="check every pin against the instances now")
    args = parser.parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if args.command == "check-config":
        print_settings(describe(settings))
    elif args.command in admin_cli.COMMANDS:
        try:
            print(admin_cli.run(settings, args.command, getattr(args, "index", None)))
        except admin_cli.AdminCallFailed as exc:
            print(f"error: {exc}", file=sys.stderr)
            sys.exit(1)
    else:
        _serve(settings)
