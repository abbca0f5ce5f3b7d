"""``python -m gateway sync-db [--dry-run]``: make the backend's table agree with the instances.

The backend's ``whatsapp:sync-instance-urls`` done right: the truth is what each instance
says it holds (``GET /api/sessions``), every live webjs row is judged against it, and each
wrong row gets its fix through the gateway's own queue, so a running gateway's newer write
is never overtaken. Rows of sessions no instance lists are listed and left alone.
"""

from __future__ import annotations

import asyncio
import sys
import time
from typing import TextIO

from gateway.accounts.pending import REDIS_ERRORS, Update
from gateway.accounts.table import DatabaseUnavailable
from gateway.accounts.writer import Writer, next_backoff, open_writer
from gateway.admin.cli import table
from gateway.decisions.account_rows import NOT_FOUND, UNKNOWN_URL, VERIFIED, WRONG
from gateway.locate.account_sync import Report, TableCheck
from gateway.locate.reconcile import Listing, list_instances
from gateway.metrics import GatewayMetrics
from gateway.shared.settings import Settings
from gateway.upstream.client import Upstreams

PROGRESS_FROM = 1000  # rows: smaller tables get no progress bar
APPLY_WAIT = 60.0  # seconds the fixes may take to be written


class ProgressBar:
    """``checking rows [#####.....] 5000/10000`` on one line, redrawn as pages come."""

    def __init__(self, stream: TextIO, width: int = 30) -> None:
        self.stream, self.width, self.shown = stream, width, False

    def __call__(self, done: int, total: int) -> None:
        if total < PROGRESS_FROM:
            return
        filled = self.width * done // total
        bar = "#" * filled + "." * (self.width - filled)
        self.stream.write(f"\rchecking rows [{bar}] {done}/{total}")
        self.stream.flush()
        self.shown = True

    def end(self) -> None:
        if self.shown:
            self.stream.write("\n")


async def sync_db(
    settings: Settings, dry_run: bool, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    """Run the check; the exit status (0 done, 1 could not finish, 2 not configured)."""
    if not settings.mysql_dsn:
        print("error: no database configured (MYSQL_DSN, or DB_* in the Laravel .env)", file=err)
        return 2
    upstreams = Upstreams.for_settings(settings, GatewayMetrics())
    writer = open_writer(settings, GatewayMetrics().database())
    bar = ProgressBar(err)
    try:
        params = {"api_key": settings.laravel_api_token} if settings.laravel_api_token else {}
        listing = await list_instances(
            upstreams, settings.instances, (), params, settings.health_timeout
        )
        report = await TableCheck(writer, settings.instances).run(
            listing.sessions, {}, dry_run=dry_run, progress=bar
        )
        bar.end()
        late = [] if dry_run else await _written(writer, report.queued)
    except DatabaseUnavailable as exc:
        bar.end()
        print(f"error: database unavailable ({exc})", file=err)
        return 1
    except REDIS_ERRORS as exc:
        bar.end()
        print(f"error: Redis unavailable ({type(exc).__name__}); nothing was queued", file=err)
        return 1
    finally:
        await writer.close()
        await upstreams.close()
    print(show_report(report, listing, len(settings.instances), dry_run), file=out)
    if late:
        print(
            f"{len(late)} fix(es) still queued: the gateway writes them when the database"
            " answers again",
            file=err,
        )
        return 1
    return 0


async def _written(writer: Writer, fixes: list[Update]) -> list[Update]:
    """Drain the queue (or let a running gateway do it) until the fixes are in; those left."""
    deadline = time.monotonic() + APPLY_WAIT
    backoff = 0.0
    while (waiting := await writer.pending.waiting(fixes)) and time.monotonic() < deadline:
        try:
            if not await writer.drain():
                await asyncio.sleep(0.2)  # another process holds the writer's lock
            backoff = 0.0
        except DatabaseUnavailable:
            backoff = next_backoff(backoff)
            await asyncio.sleep(backoff)
    return waiting


def show_report(report: Report, listing: Listing, instances: int, dry_run: bool) -> str:
    fixed = "would fix" if dry_run else "fixed"
    answered = len(listing.sessions)
    lines = [f"{report.checked} webjs row(s) checked against {answered} of {instances} instance(s)"]
    if listing.unanswered:
        lines.append(
            "not listed (their sessions count as not found): " + ", ".join(listing.unanswered)
        )
    counts = [
        ("verified", len(report.of(VERIFIED))),
        (fixed, len(report.of(WRONG))),
        ("not found on any instance", len(report.of(NOT_FOUND))),
        ("unknown instance URL", len(report.of(UNKNOWN_URL))),
    ]
    lines += ["", table(("result", "rows"), counts)]
    if report.of(WRONG):
        rows = [
            (v.row.session_id, v.row.url, v.row.index, v.url, v.index) for v in report.of(WRONG)
        ]
        lines += ["", f"{fixed}:", table(("session", "was", "index", "now", "index"), rows)]
    for kind, title in (
        (NOT_FOUND, "not found on any instance (left alone)"),
        (UNKNOWN_URL, "unknown instance URL (left alone)"),
    ):
        if report.of(kind):
            rows = [(v.row.session_id, v.row.url) for v in report.of(kind)]
            lines += ["", f"{title}:", table(("session", "assigned_instance_url"), rows)]
    if dry_run:
        lines += ["", "dry run: nothing was changed"]
    return "\n".join(lines)
