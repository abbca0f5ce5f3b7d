"""The command line: every subcommand and flag, and the pool settings the flags override."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any, NoReturn

from gateway.shared.settings import LOG_FORMATS, Settings
from workers.settings import WorkerSettings
from workers.worker import PoolConfig

DESCRIPTION = """python -m workers: run the pool, enqueue a job, show stats, manage failed jobs.

Settings come from the environment, the Laravel .env, config/gateway.local.toml and
config/gateway.toml (see check-config); the flags override them. A bad setting or flag
prints one line and exits 2.
"""

# Flag -> WorkerSettings field, for the flags that override settings.
OVERRIDES = {
    "queue": "queues",
    "concurrency": "concurrency",
    "tries": "tries",
    "timeout": "timeout",
    "backoff": "backoff",
    "retry_after": "retry_after",
    "grace": "grace",
    "metrics_port": "metrics_port",
    "metrics_host": "metrics_host",
    "handler": "handlers",
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.exit(2, f"workers: {message}\n")


def _handler_flag(value: str) -> tuple[str, str]:
    name, sep, target = value.partition("=")
    if not sep or not name or ":" not in target:
        raise argparse.ArgumentTypeError(f"{value!r} is not NAME=package.module:function")
    return name, target


def _queues_flag(value: str) -> tuple[str, ...]:
    queues = tuple(q.strip() for q in value.split(",") if q.strip())
    if not queues:
        raise argparse.ArgumentTypeError("names no queue")
    return queues


FAILED_HELP = (
    "Failed jobs (failed_jobs with a database, else Redis) and dead-lettered webhook events"
    " (queue webhook). The same operations as the gateway's console."
)


def _failed_flags(
    parser: argparse.ArgumentParser, *, queue: bool = True, limit: bool = False
) -> None:
    """The flags of one ``failed`` subcommand: its own, not the pool's."""
    if queue:
        parser.add_argument("--queue", dest="only_queue", metavar="QUEUE", help="only this queue")
    if limit:
        parser.add_argument("--limit", type=int, default=0, help="at most N (default: all)")
    parser.add_argument("--json", action="store_true", help="JSON instead of text")


def build_parser() -> Parser:
    common = Parser(add_help=False)
    flags = common.add_argument_group("pool settings (override the config)")
    s = argparse.SUPPRESS
    flags.add_argument("--queue", type=_queues_flag, default=s, help="a,b,c in priority order")
    flags.add_argument("--concurrency", type=int, default=s, help="jobs in flight per process")
    flags.add_argument("--tries", type=int, default=s, help="attempts per job; 0: no limit")
    flags.add_argument("--timeout", type=float, default=s, help="seconds a job may run")
    flags.add_argument("--backoff", default=s, help="seconds before each retry, e.g. 10,60,300")
    flags.add_argument("--retry-after", type=float, default=s, help="reservation, seconds")
    flags.add_argument("--grace", type=float, default=s, help="seconds to finish on SIGTERM")
    flags.add_argument("--metrics-port", type=int, default=s, help="0 disables /metrics")
    flags.add_argument("--metrics-host", default=s, help="address of /metrics (127.0.0.1)")
    flags.add_argument("--log-format", choices=LOG_FORMATS, default=s, help="text or json")
    flags.add_argument(
        "--handler",
        type=_handler_flag,
        action="append",
        default=s,
        metavar="NAME=MOD:FUNC",
        help="register a handler (repeatable)",
    )

    parser = Parser(prog="python -m workers", parents=[common], description=DESCRIPTION)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common], help="run the pool (the default)")
    enqueue = sub.add_parser("enqueue", parents=[common], help="push a job as Laravel does")
    enqueue.add_argument("queue_name", metavar="QUEUE")
    enqueue.add_argument("job", metavar="JOB", help="handler name, e.g. whatsapp.send_message")
    enqueue.add_argument("--data", type=json.loads, default={}, help="the job's data as JSON")
    enqueue.add_argument("--delay", type=float, default=0.0, help="run in S seconds")
    sub.add_parser("stats", parents=[common], help="queue depths and failed count")
    sub.add_parser("check-config", help="print the settings in force and where each came from")
    failed = sub.add_parser(
        "failed", help="failed jobs and dead-lettered webhooks", description=FAILED_HELP
    )
    action = failed.add_subparsers(dest="action", metavar="ACTION", required=True)
    listing = action.add_parser("list", help="list failed jobs, newest first")
    _failed_flags(listing, limit=True)
    show = action.add_parser("show", help="show one failed job whole")
    show.add_argument("id")
    _failed_flags(show, queue=False)
    retry = action.add_parser("retry", help="push failed jobs back onto their queue")
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all", action="store_true", help="every failed job (of --queue)")
    retry.add_argument(
        "--resend",
        action="store_true",
        help="send again for real: a fresh uuid, so the gateway does not answer from its store",
    )
    _failed_flags(retry)
    forget = action.add_parser("forget", help="delete one failed job")
    forget.add_argument("id")
    _failed_flags(forget, queue=False)
    _failed_flags(action.add_parser("flush", help="delete all failed jobs"), queue=False)
    return parser


def configure(args: argparse.Namespace, settings: Settings, workers: WorkerSettings) -> PoolConfig:
    """The pool config: settings, then the flags given."""
    overrides: dict[str, Any] = {}
    for flag, name in OVERRIDES.items():
        if hasattr(args, flag):
            value = getattr(args, flag)
            if flag == "handler":
                value = {**workers.handlers, **dict(value)}
            overrides[name] = value
    return PoolConfig.build(settings, dataclasses.replace(workers, **overrides))
