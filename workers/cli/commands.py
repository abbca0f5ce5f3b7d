"""The entry point: read the settings, run the subcommand asked for."""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Sequence

import uvloop

from gateway.shared import logs
from gateway.shared.laravel.prefixes import check_prefix
from gateway.shared.loader import describe, print_settings
from gateway.shared.redis_url import primary_line
from gateway.shared.settings import SettingsError
from workers.cli.failed import failed
from workers.cli.parser import build_parser, configure
from workers.cli.serving import serve
from workers.cli.stats import enqueue, stats
from workers.handlers import HandlerError
from workers.settings import load_worker_settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        settings, workers = load_worker_settings()
        config = configure(args, settings, workers)
        if args.command == "enqueue" and not isinstance(args.data, dict):
            raise SettingsError("--data must be a JSON object")
        if args.command == "failed" and args.action == "retry" and bool(args.id) == args.all:
            raise SettingsError("failed retry needs an ID or --all")
        if args.command in (None, "run") and config.php is not None:
            problem = config.php.check()
            if problem:
                raise SettingsError(problem)
    except (SettingsError, ValueError) as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print_settings(describe(settings, workers=workers))
        print(asyncio.run(primary_line(settings.redis_url)))
        warning = asyncio.run(
            check_prefix(settings.redis_url, settings.redis_prefix, config.queues)
        )
        if warning:
            print(f"warning: {warning}")
        return 0
    logs.configure(settings.log_level, getattr(args, "log_format", settings.log_format))
    run = functools.partial(serve, workers=workers)
    command = {None: run, "run": run, "enqueue": enqueue, "stats": stats, "failed": failed}
    try:
        return uvloop.run(command[args.command](args, settings, config))
    except HandlerError as exc:
        print(f"workers: {exc}", file=sys.stderr)
        return 2
