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
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, NoReturn

import uvloop
from redis.asyncio import Redis
from redis.exceptions import RedisError

from gateway.shared import logs
from gateway.shared.laravel.failed import MYSQL_ERRORS, FailedJob, FailedStore, failed_store
from gateway.shared.laravel.jobs import encode, new_payload
from gateway.shared.laravel.prefixes import check_prefix, prefix_warning
from gateway.shared.laravel.queues import Depth, Queues
from gateway.shared.limits import raise_open_files
from gateway.shared.outbox import Backlog, DeadLetter, Outbox
from gateway.shared.redis_url import SwitchFollower
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
    failed = sub.add_parser("failed", parents=[common], help="failed jobs")
    action = failed.add_subparsers(dest="action", metavar="ACTION", required=True)
    action.add_parser("list", help="list failed jobs")
    action.add_parser("show", help="show one failed job").add_argument("id")
    retry = action.add_parser("retry", help="push failed jobs back onto their queue")
    retry.add_argument("id", nargs="?")
    retry.add_argument("--all", action="store_true")
    retry.add_argument(
        "--resend",
        action="store_true",
        help="send again for real: a fresh uuid, so the gateway does not answer from its store",
    )
    action.add_parser("forget", help="delete one failed job").add_argument("id")
    action.add_parser("flush", help="delete all failed jobs")
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


@contextlib.asynccontextmanager
async def _failed_store(settings: Settings, config: PoolConfig) -> AsyncIterator[FailedStore]:
    redis = redis_client(settings.redis_url)
    mysql = await mysql_pool(settings.mysql_dsn)
    try:
        yield failed_store(
            redis,
            settings.redis_prefix,
            mysql,
            connection=config.laravel_connection,
            timezone=config.timezone,
        )
    finally:
        await redis.aclose()
        if mysql is not None:
            mysql.close()
            await mysql.wait_closed()


async def stats(args: argparse.Namespace, settings: Settings, config: PoolConfig) -> int:
    async with _failed_store(settings, config) as store:
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
    async with _failed_store(settings, config) as store:
        outbox = Outbox(store.redis, settings.key_prefix)
        letters = {letter.id: letter for letter in await outbox.dead_letters()}
        if getattr(args, "id", None) in letters:
            return await _dead_letter_action(outbox, letters[args.id], args.action)
        code = await _failed_action(store, args)
        if args.action == "list":
            for letter in letters.values():
                print(_dead_letter_line(letter))
        elif args.action == "retry" and args.all:
            for letter in letters.values():
                await _dead_letter_action(outbox, letter, "retry")
        elif args.action == "flush" and letters:
            gone = [await outbox.forget(letter_id) for letter_id in letters]
            print(f"flushed {sum(gone)} dead-lettered webhooks")
        return code


async def _failed_action(store: FailedStore, args: argparse.Namespace) -> int:
    if args.action == "list":
        for e in await _entries(store):
            name = _job_name(e.payload)
            line = f"{e.id}  {e.failed_at}  {e.queue}  {name}  {_headline(e.exception)[:100]}"
            if e.refused:
                line += f"  (refused by the database, kept in Redis: {e.refused})"
            print(f"{line}  (waiting for the database)" if e.waiting else line)
        return 0
    if args.action == "show":
        entry = await store.find(args.id)
        if entry is None:
            print(f"workers: no failed job {args.id}", file=sys.stderr)
            return 1
        print(json.dumps(dataclasses.asdict(entry), indent=2, ensure_ascii=False))
        return 0
    if args.action == "retry":
        entry = None if args.all else await store.find(args.id)
        if not args.all and entry is None:
            print(f"workers: no failed job {args.id}", file=sys.stderr)
            return 1
        if entry is not None and entry.connection != store.connection:
            print(
                f"workers: failed job {args.id} is on connection {entry.connection!r}, not"
                f" {store.connection!r}: retry it with php artisan queue:retry",
                file=sys.stderr,
            )
            return 1
        listed = [e.id for e in await _entries(store) if e.connection == store.connection]
        retried = await store.retry(None if args.all else args.id, resend=args.resend)
        for job_id in retried:
            print(f"retried {job_id}")
        for job_id in listed if args.all else [args.id]:
            if job_id not in retried:
                print(f"skipped {job_id}: {await _not_retried(store, job_id)}")
        return 0 if retried or args.all else 1
    if args.action == "forget":
        if not await store.forget(args.id):
            print(f"workers: no failed job {args.id}", file=sys.stderr)
            return 1
        print(f"forgot {args.id}")
        return 0
    print(f"flushed {await store.flush()}")
    return 0


async def _entries(store: FailedStore) -> list[FailedJob]:
    """Every failed job; with the database away, those waiting for it, and a note."""
    try:
        return await store.all()
    except MYSQL_ERRORS as exc:
        print(
            f"workers: the database does not answer ({type(exc).__name__}); only the failed"
            " jobs waiting for it are seen",
            file=sys.stderr,
        )
        return await store.waiting_entries()


def _dead_letter_line(letter: DeadLetter) -> str:
    """A dead-lettered webhook as ``failed list`` shows a failed job; the queue is webhook."""
    when = datetime.fromtimestamp(letter.dead_at, UTC).strftime("%Y-%m-%d %H:%M:%S")
    lines = letter.error.strip().splitlines()
    first = lines[0] if lines else ""
    return f"{letter.id}  {when}  webhook  {letter.event or '?'}  {first[:100]}"


async def _dead_letter_action(outbox: Outbox, letter: DeadLetter, action: str) -> int:
    if action == "show":
        entry = dataclasses.asdict(letter) | {"body": letter.body.decode("utf-8", "replace")}
        print(json.dumps(entry, indent=2, ensure_ascii=False))
    elif action == "retry":
        if await outbox.requeue(letter.id, time.time()):
            print(f"retried {letter.id}")
    elif action == "forget" and await outbox.forget(letter.id):
        print(f"forgot {letter.id}")
    return 0


async def _not_retried(store: FailedStore, job_id: str) -> str:
    """Why a failed job listed a moment ago was not pushed back."""
    if await store.find(job_id) is None:
        return "no longer in the failed store (retried or forgotten meanwhile, e.g. by PHP)"
    return "its payload is not a JSON object, so it cannot run"


def _job_name(payload: str) -> str:
    """``displayName`` (a PHP job's class), else ``job``."""
    try:
        decoded = json.loads(payload)
        return str(decoded.get("displayName") or decoded.get("job") or "?")
    except (ValueError, AttributeError):
        return "?"


def _headline(exception: str) -> str:
    """The line that says what went wrong: PHP's first line, a Python traceback's last."""
    lines = exception.strip().splitlines()
    if not lines:
        return ""
    return lines[-1] if lines[0].startswith("Traceback (") else lines[0]
