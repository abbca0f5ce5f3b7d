"""The backend's accounts table: a small aiomysql pool and the only statements run on it.

Values always travel as parameters; table and column names come from the settings, checked
against ``IDENTIFIER`` at start-up, and are quoted. Every wait is bounded (connect, then one
``query_timeout`` per batch or read), and a connection that failed or was cut mid-way is
closed rather than returned to the pool. The gateway only ever updates the two columns of
webjs rows that are not soft-deleted: it never inserts, deletes or touches another row.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import aiomysql
import pymysql

from gateway.accounts.pending import Update
from gateway.decisions.account_rows import Row
from gateway.decisions.events import same_place
from gateway.decisions.view import BackendView
from gateway.metrics import DatabaseMetrics
from gateway.shared.settings import DatabaseSettings, MySQLParams
from gateway.shared.tasks import within

ACTIVE_STATUSES = ("connected", "qr_scanning")  # what the backend's balancer counts


class DatabaseUnavailable(Exception):
    """The database did not answer, answered an error, or took too long."""


class LostLock(Exception):
    """Another writer took over before this batch committed; it was rolled back."""


@dataclass(frozen=True)
class Statements:
    """The SQL for one configured table."""

    locked: str  # {marks}: one %s per session id
    update: str
    count: str
    page: str
    active: str

    @classmethod
    def build(cls, d: DatabaseSettings) -> Statements:
        t, sid, url, idx = (
            f"`{n}`" for n in (d.table, d.session_column, d.url_column, d.index_column)
        )
        live = f"`{d.provider_column}` = 'webjs' AND `{d.deleted_column}` IS NULL"
        statuses = ", ".join(f"'{s}'" for s in ACTIVE_STATUSES)
        return cls(
            locked=f"SELECT {sid}, {url}, {idx} FROM {t} WHERE {sid} IN ({{marks}}) AND {live}"
            " FOR UPDATE",
            update=f"UPDATE {t} SET {url} = %s, {idx} = %s, `{d.updated_column}` = NOW()"
            f" WHERE {sid} = %s AND {live}",
            count=f"SELECT COUNT(*) FROM {t} WHERE {live}",
            page=f"SELECT {sid}, {url}, {idx} FROM {t} WHERE {live} AND {sid} > %s"
            f" ORDER BY {sid} LIMIT %s",
            active=f"SELECT {url}, {idx}, COUNT(*) FROM {t}"
            f" WHERE `{d.status_column}` IN ({statuses})"
            f" AND `{d.deleted_column}` IS NULL GROUP BY {url}, {idx}",
        )


class AccountsTable:
    """``gateway_db_up`` follows every use: 1 after a success, 0 after a failure."""

    def __init__(
        self,
        dsn: str,
        settings: DatabaseSettings,
        metrics: DatabaseMetrics | None = None,
        view: BackendView | None = None,
    ) -> None:
        self.params = MySQLParams.from_dsn(dsn)
        self.view = view  # rows naming the gateway are counted for the instance of their index
        self.settings = settings
        self.metrics = metrics
        self.sql = Statements.build(settings)
        self._pool: aiomysql.Pool | None = None

    async def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            await self._pool.wait_closed()

    async def _get_pool(self) -> aiomysql.Pool:
        """The pool, made on first use: it opens no connection until one is needed."""
        if self._pool is None:
            self._pool = await aiomysql.create_pool(
                **asdict(self.params),
                minsize=0,
                maxsize=self.settings.pool_size,
                connect_timeout=self.settings.connect_timeout,
                pool_recycle=300,
                autocommit=True,
                charset="utf8mb4",
            )
        return self._pool

    @contextlib.asynccontextmanager
    async def _cursor(self) -> AsyncIterator[aiomysql.Cursor]:
        """A cursor on a pooled connection, the whole use bounded by ``query_timeout``."""
        s = self.settings
        conn: aiomysql.Connection | None = None
        pool = await self._get_pool()
        try:
            conn = await within(pool.acquire(), s.connect_timeout, late=_discard(pool))
            async with asyncio.timeout(s.query_timeout):
                async with conn.cursor() as cur:
                    yield cur
        except BaseException as exc:
            if conn is not None:
                conn.close()  # state unknown: never handed out again
            if isinstance(exc, pymysql.MySQLError | OSError | TimeoutError):
                self._set_up(False)
                raise DatabaseUnavailable(_describe(exc)) from exc
            raise
        else:
            self._set_up(True)
        finally:
            if conn is not None:
                pool.release(conn)

    def _set_up(self, up: bool) -> None:
        if self.metrics is not None:
            self.metrics.up.set(int(up))

    async def apply(
        self, updates: Sequence[Update], still_ours: Callable[[], Awaitable[bool]]
    ) -> dict[str, str]:
        """Write a batch in one transaction; the result per session id.

        ``written``: the row was wrong and now says ``url``/``index``; ``unchanged``: it was
        right already (not written again); ``no_row``: no live webjs row has that session.
        ``still_ours`` is asked just before the commit; when it says no, nothing is committed.
        A row's URL spelled another way (``localhost`` for ``127.0.0.1``) is not rewritten.
        """
        results: dict[str, str] = {}
        async with self._cursor() as cur:
            await cur.execute("BEGIN")
            marks = ", ".join(["%s"] * len(updates))
            await cur.execute(self.sql.locked.format(marks=marks), [u.session_id for u in updates])
            rows = {sid: (url, index) for sid, url, index in await cur.fetchall()}
            for u in updates:
                current = rows.get(u.session_id)
                if current is None:
                    results[u.session_id] = "no_row"
                elif current[1] == u.index and same_place(current[0], u.url):
                    results[u.session_id] = "unchanged"
                else:
                    await cur.execute(self.sql.update, (u.url, u.index, u.session_id))
                    results[u.session_id] = "written"
            if not await still_ours():
                await cur.execute("ROLLBACK")
                raise LostLock
            await cur.execute("COMMIT")
        return results

    async def count(self) -> int:
        """Live webjs rows."""
        async with self._cursor() as cur:
            await cur.execute(self.sql.count)
            (count,) = await cur.fetchone()
        return int(count)

    async def page(self, after: str, limit: int) -> list[Row]:
        """Up to ``limit`` live webjs rows with session ids after ``after``, in order."""
        async with self._cursor() as cur:
            await cur.execute(self.sql.page, (after, limit))
            return [Row(sid, url, index) for sid, url, index in await cur.fetchall()]

    async def rows(self, page_size: int = 1000) -> AsyncIterator[list[Row]]:
        """Every live webjs row, a page at a time (keyset pagination on the session id)."""
        after = ""
        while page := await self.page(after, page_size):
            yield page
            after = page[-1].session_id

    async def active_counts(self) -> Mapping[str | None, int]:
        """The backend balancer's count: active rows per ``assigned_instance_url``; a row
        naming the gateway counts for the instance its index names (or as it is, if none)."""
        async with self._cursor() as cur:
            await cur.execute(self.sql.active)
            rows = await cur.fetchall()
        counts: dict[str | None, int] = {}
        for url, index, count in rows:
            where = self.view.instance_of(url, index) if self.view else None
            key = where if where is not None and self.view.names_gateway(url) else url
            counts[key] = counts.get(key, 0) + int(count)
        return counts


def _discard(pool: aiomysql.Pool) -> Callable[[aiomysql.Connection], None]:
    """For a connection made after its caller gave up: closed, never handed out."""

    def discard(conn: aiomysql.Connection) -> None:
        conn.close()
        pool.release(conn)

    return discard


def _describe(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "timed out"
    if isinstance(exc, pymysql.MySQLError) and exc.args:
        return f"{type(exc).__name__} {exc.args[0]}"
    return type(exc).__name__
