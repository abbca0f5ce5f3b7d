"""``failed``: list, show, retry and forget failed jobs and dead-lettered webhooks."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from gateway.shared.failures import (
    Failures,
    job_detail,
    job_summary,
    letter_detail,
    letter_summary,
    open_failures,
)
from gateway.shared.settings import Settings
from workers.worker import PoolConfig


def _failures(settings: Settings, config: PoolConfig) -> AbstractAsyncContextManager[Failures]:
    return open_failures(settings, connection=config.laravel_connection, timezone=config.timezone)


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
