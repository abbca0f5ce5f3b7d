"""Keeping the backend's accounts table true: every live webjs row against the instances' lists.

Run after each reconciliation (in the background, so neither start-up nor a request waits
on the database) and by ``python -m gateway sync-db``. A wrong row gets a fix queued like
any placement; rows of sessions no instance lists are reported and left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from gateway.accounts.pending import REDIS_ERRORS, Update
from gateway.accounts.table import DatabaseUnavailable
from gateway.accounts.writer import Writer
from gateway.decisions.account_rows import WRONG, RowVerdict, judge
from gateway.decisions.corrections import holder_parts
from gateway.shared.tasks import cancel_and_wait, paced

log = logging.getLogger("gateway.accounts")

# progress(rows checked, rows in the table)
Progress = Callable[[int, int], None]


@dataclass
class Report:
    """Every row checked, by verdict kind; ``queued`` fixes were put on the writer's queue."""

    verdicts: dict[str, list[RowVerdict]] = field(default_factory=dict)
    queued: list[Update] = field(default_factory=list)

    def of(self, kind: str) -> list[RowVerdict]:
        return self.verdicts.get(kind, [])

    @property
    def checked(self) -> int:
        return sum(len(v) for v in self.verdicts.values())


class TableCheck:
    def __init__(self, writer: Writer, instances: Sequence[str]) -> None:
        self.writer, self.instances = writer, tuple(instances)
        self._task: asyncio.Task[None] | None = None

    async def run(
        self,
        listings: Mapping[str, Sequence[str]],
        pins: Mapping[str, str],
        *,
        dry_run: bool = False,
        progress: Progress | None = None,
    ) -> Report:
        """Judge every row, a page at a time, and queue a fix for each wrong one."""
        table = self.writer.table
        holders: dict[str, list[str]] = {}
        async for _ in paced(holder_parts(listings, holders)):
            pass
        total = await table.count() if progress else 0
        report = Report()
        async for page in table.rows():
            verdicts = [judge(row, holders, self.writer.view, pins) for row in page]
            for verdict in verdicts:
                report.verdicts.setdefault(verdict.kind, []).append(verdict)
            fixes = [
                Update(v.row.session_id, v.url, v.index)
                for v in verdicts
                if v.kind == WRONG and v.url is not None
            ]
            if fixes and not dry_run:
                await self.writer.queue(fixes)
                report.queued.extend(fixes)
            if progress:
                progress(report.checked, max(total, report.checked))
        return report

    def schedule(self, listings: Mapping[str, Sequence[str]], pins: Mapping[str, str]) -> None:
        """Check in the background; skipped while the previous check still runs."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run_logged(listings, pins))

    async def close(self) -> None:
        await cancel_and_wait([self._task])

    async def _run_logged(
        self, listings: Mapping[str, Sequence[str]], pins: Mapping[str, str]
    ) -> None:
        try:
            report = await self.run(listings, pins)
        except DatabaseUnavailable as exc:
            log.warning("cannot check the accounts table (%s); next reconciliation retries", exc)
        except REDIS_ERRORS as exc:
            log.warning("cannot queue the accounts table's fixes (%s)", type(exc).__name__)
        except Exception:
            log.exception("checking the accounts table failed")
        else:
            if report.queued:
                log.warning("accounts table: %d row(s) wrong, fixes queued", len(report.queued))
