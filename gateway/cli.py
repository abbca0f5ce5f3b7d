"""``python -m gateway``: serve, or inspect the settings in force."""

from __future__ import annotations

import argparse
import logging
import sys

import uvloop
from aiohttp import web

from gateway.settings import Settings, SettingsError, describe, load_settings


def _serve(settings: Settings) -> None:
    from gateway.app import create_app

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


def _check_config(settings: Settings) -> None:
    rows = describe(settings)
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value}  [{source}]")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="serve the instance API (the default)")
    sub.add_parser("check-config", help="print the settings in force and where each came from")
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
        _check_config(settings)
    else:
        _serve(settings)

