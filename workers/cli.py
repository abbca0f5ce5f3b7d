"""python -m workers: run the pool, enqueue a job, show stats, manage failed jobs.

Settings come from the environment, the Laravel .env, config/gateway.local.toml and
config/gateway.toml (see check-config); the flags override them. A bad setting or flag
prints one line and exits 2.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import functools
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any, NoReturn

import uvloop
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.shared import logs
from gateway.shared.failures import (
    Failures,
    job_detail,
    job_summary,
    letter_detail,
    letter_summary,
    open_failures,
)
from gateway.shared.laravel.failed import MYSQL_ERRORS
from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.prefixes import check_prefix, prefix_warning
from gateway.shared.laravel.queues import Depth, Queues
from gateway.shared.limits import raise_open_files
from gateway.shared.outbox import Backlog, Outbox
from gateway.shared.redis_url import SwitchFollower, primary_line
from gateway.shared.settings import LOG_FORMATS, Settings, SettingsError, describe, print_settings
from workers.connections import mysql_pool, redis_client
from workers.delivery import RelayConfig, WebhookRelay
from workers.handlers import HandlerError
from workers.settings import WorkerSettings, load_worker_settings
from workers.worker import Pool, PoolConfig

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

    parser = Parser(prog="python -m workers", parents=[common], description=__doc__)
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


async def serve(
    args: argparse.Namespace, settings: Settings, config: PoolConfig, workers: WorkerSettings
) -> int:
    """The pool, and the webhook relay beside it when webhooks are delivered."""
    raise_open_files()
    relay = RelayConfig.build(settings, workers)
    slots = config.concurrency + (relay.concurrency + 1 if relay else 0)
    redis = redis_client(settings.redis_url, max_connections=2 * slots + 10)
    follower = SwitchFollower(settings.redis_url, [redis])
    follower.start()
    mysql = await mysql_pool(settings.mysql_dsn)
    try:
        pool = Pool(config, redis, mysql)
        relays = [WebhookRelay(relay, redis, pool.metrics)] if relay else []
        stopped = asyncio.Event()

        def stop() -> None:
            stopped.set()
            pool.stop()
            for r in relays:
                r.stop()

        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        loop.add_signal_handler(signal.SIGHUP, functools.partial(_restart, stop))
        if not await _until_redis_answers(redis, stopped):
            return 0
        with contextlib.suppress(RedisError, OSError):
            warning = await prefix_warning(redis, settings.redis_prefix, config.queues)
            if warning:
                logging.getLogger("workers").warning(warning)
        pool.metrics.serve(config.metrics_port, config.metrics_host)
        logging.getLogger("workers").info(
            "taking jobs from %s, %d at a time", ",".join(config.queues), config.concurrency
        )
        logging.getLogger("workers").info(
            "PHP job classes: %s",
            f"{config.php.workers} PHP processes in {config.php.app_path}"
            if config.php
            else "off (no Laravel app: set LARAVEL_APP_PATH), they fail as unknown jobs",
        )
        await asyncio.gather(pool.run(), *(r.run() for r in relays))
    finally:
        await follower.close()
        await redis.aclose()
        if mysql is not None:
            mysql.close()
            await mysql.wait_closed()
    return 0


async def _until_redis_answers(redis: Redis, stopped: asyncio.Event) -> bool:
    """Wait for Redis, which a reboot may start after the workers; False if stopped first.

    Exiting instead would make supervisor give up on the program after a few quick tries.
    """
    warned = False
    while not stopped.is_set():
        try:
            await redis.ping()
            return True
        except (RedisError, OSError) as exc:
            if not warned:
                logging.getLogger("workers").warning("Redis does not answer (%s); waiting", exc)
                warned = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopped.wait(), 1)
    return False


def _restart(stop: Callable[[], None]) -> None:
    """SIGHUP (a reload): finish the running jobs and exit 0, to be started again by
    supervisor or systemd with the new settings and code."""
    logging.getLogger("workers").info(
        "reload: finishing running jobs, then exiting to start again with the new settings"
    )
    stop()


async def enqueue(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    redis = redis_client(settings.redis_url)
    try:
        payload = new_payload(args.job, args.data)
        queues = Queues(redis, settings.redis_prefix, [args.queue_name])
        if args.delay > 0:
            await queues.later(args.queue_name, encode(payload), args.delay)
        else:
            await queues.push(args.queue_name, encode(payload))
    finally:
        await redis.aclose()
    print(payload["uuid"])
    return 0


def format_backlog(b: Backlog) -> str:
    """The webhook outbox in one line, for ``stats``."""
    if b.waiting == 0:
        return f"webhooks: 0 waiting, {b.dead} dead-lettered"
    oldest = "unknown" if b.oldest_age is None else f"{b.oldest_age:.1f}s"
    return (
        f"webhooks: {b.waiting} waiting in {b.lanes} sessions, oldest {oldest},"
        f" {b.dead} dead-lettered"
    )


def format_depths(depths: Sequence[Depth], failed: int | None, waiting: int = 0) -> str:
    """``failed`` None: the database does not answer, only ``waiting`` is known."""

    def age(d: Depth) -> str:
        if d.waiting == 0:
            return "-"
        return "unknown" if d.oldest_age is None else f"{d.oldest_age:.1f}s"

    width = max(len("queue"), *(len(d.queue) for d in depths))
    lines = [f"{'queue':<{width}}  {'waiting':>8}  {'delayed':>8}  {'reserved':>8}  oldest"]
    lines += [
        f"{d.queue:<{width}}  {d.waiting:>8}  {d.delayed:>8}  {d.reserved:>8}  {age(d)}"
        for d in depths
    ]
    if failed is None:
        lines.append(f"failed: unknown, the database does not answer ({waiting} waiting for it)")
    elif waiting:
        lines.append(f"failed: {failed} ({waiting} waiting for the database)")
    else:
        lines.append(f"failed: {failed}")
    return "\n".join(lines)


def _failures(settings: Settings, config: PoolConfig) -> AbstractAsyncContextManager[Failures]:
    return open_failures(settings, connection=config.laravel_connection, timezone=config.timezone)


async def stats(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    async with _failures(settings, config) as failures:
        store = failures.store
        depths = await Queues(store.redis, settings.redis_prefix, config.queues).depths()
        waiting = await store.waiting()
        try:
            failed: int | None = await store.count()
        except MYSQL_ERRORS:
            failed = None
        backlog = await Outbox(store.redis, settings.key_prefix).backlog(time.time())
    print(format_depths(depths, failed, waiting))
    print(format_backlog(backlog))
    return 0


async def failed(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    """``failed ACTION``: failed jobs first, then dead letters (their ids never clash)."""
    async with _failures(settings, config) as failures:
        if args.action == "list":
            return await _list(failures, args)
        if args.action == "show":
            return await _show(failures, args.id)
        if args.action == "retry":
            return await _retry(failures, args)
        if args.action == "forget":
            return await _forget(failures, args)
        flushed, letters = await failures.flush(), await failures.letters()
        dropped = [await failures.drop_letter(x.id) for x in letters]
        _say(
            args,
            {"flushed": flushed, "dead_letters_dropped": sum(dropped)},
            [
                f"flushed {flushed}",
                *([f"flushed {sum(dropped)} dead-lettered webhooks"] if letters else []),
            ],
        )
        return 0


def _say(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    """``data`` as JSON with ``--json``, else the lines."""
    if getattr(args, "json", False):
        print(json.dumps(data, indent=2, ensure_ascii=False))
    else:
        for line in lines:
            print(line)


async def _list(failures: Failures, args: argparse.Namespace) -> int:
    queue, limit = args.only_queue, args.limit
    listing = await failures.jobs(queue, limit)
    if listing.database_error:
        print(
            f"workers: the database does not answer ({listing.database_error}); only the"
            " failed jobs waiting for it are seen",
            file=sys.stderr,
        )
    letters = [x for x in await failures.letters() if queue in (None, "webhook")]
    if limit:
        letters = letters[: max(0, limit - len(listing.jobs))]
    jobs = [job_summary(e) for e in listing.jobs]
    dead = [letter_summary(x) for x in letters]
    lines = [_job_line(j) for j in jobs] + [_letter_line(x) for x in dead]
    if not lines:
        lines = [f"no failed jobs{f' on {queue}' if queue else ''} and no dead-lettered webhooks"]
    elif listing.total > len(jobs) and limit:
        lines.append(f"({len(jobs)} of {listing.total} failed jobs shown: --limit)")
    _say(args, {"jobs": jobs, "total": listing.total, "dead_letters": dead}, lines)
    return 0


def _job_line(job: dict[str, Any]) -> str:
    line = f"{job['id']}  {job['failed_at']}  {job['queue']}  {job['job']}  {job['exception']}"
    if job["refused"]:
        line += f"  (refused by the database, kept in Redis: {job['refused']})"
    return f"{line}  (waiting for the database)" if job["waiting"] else line


def _letter_line(letter: dict[str, Any]) -> str:
    """A dead-lettered webhook as ``failed list`` shows a failed job; the queue is webhook."""
    when = letter["dead_at"].replace("T", " ").removesuffix("+00:00")
    return f"{letter['id']}  {when}  webhook  {letter['event'] or '?'}  {letter['error']}"


async def _show(failures: Failures, item: str) -> int:
    entry = await failures.job(item)
    letter = None if entry is not None else await failures.letter(item)
    if entry is None and letter is None:
        print(f"workers: no failed job {item}", file=sys.stderr)
        return 1
    shown = job_detail(entry) if entry is not None else letter_detail(letter)  # type: ignore[arg-type]
    print(json.dumps(shown, indent=2, ensure_ascii=False))
    return 0


async def _retry(failures: Failures, args: argparse.Namespace) -> int:
    queue = args.only_queue
    letter = args.id is not None and await failures.job(args.id) is None
    if letter and await failures.retry_letter(args.id):
        _say(args, {"retried": [args.id], "skipped": {}}, [f"retried {args.id}"])
        return 0
    done = await failures.retry(args.id, queue=queue, resend=args.resend)
    retried, skipped = list(done.retried), dict(done.skipped)
    if args.all and queue in (None, "webhook"):
        for letter in await failures.letters():
            if await failures.retry_letter(letter.id):
                retried.append(letter.id)
    if args.id is not None and not retried and "connection" in skipped.get(args.id, ""):
        print(f"workers: failed job {args.id} is {skipped[args.id]}", file=sys.stderr)
        return 1
    if args.id is not None and skipped.get(args.id) == "no such failed job":
        print(f"workers: no failed job {args.id}", file=sys.stderr)
        return 1
    lines = [f"retried {i}" for i in retried] + [f"skipped {i}: {w}" for i, w in skipped.items()]
    if not lines:
        lines = ["nothing to retry"]
    _say(args, {"retried": retried, "skipped": skipped}, lines)
    return 0 if retried or args.all else 1


async def _forget(failures: Failures, args: argparse.Namespace) -> int:
    if not (await failures.forget(args.id) or await failures.drop_letter(args.id)):
        print(f"workers: no failed job {args.id}", file=sys.stderr)
        return 1
    _say(args, {"forgotten": args.id}, [f"forgot {args.id}"])
    return 0
