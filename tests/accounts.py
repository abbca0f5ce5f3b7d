"""A MariaDB database of the test's own holding the backend's ``whatsapp_accounts`` table.

The table has the reference's columns. A trigger logs every UPDATE of a row into
``account_writes`` (in order), so tests see on the server side what was written, when,
and that nothing else was.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import aiomysql

OLD = "2020-01-01 00:00:00"  # updated_at of every inserted row, to see which were touched

DDL = (
    """
    CREATE TABLE whatsapp_accounts (
      id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
      uuid CHAR(36) NOT NULL UNIQUE,
      workspace_id BIGINT UNSIGNED NOT NULL,
      session_id VARCHAR(255) NOT NULL UNIQUE,
      phone_number VARCHAR(50) NULL,
      provider_type ENUM('meta', 'webjs') NOT NULL DEFAULT 'webjs',
      status ENUM('qr_scanning', 'authenticated', 'connected', 'disconnected', 'failed')
        NOT NULL DEFAULT 'qr_scanning',
      assigned_instance_index TINYINT NULL,
      assigned_instance_url VARCHAR(255) NULL,
      created_at TIMESTAMP NULL,
      updated_at TIMESTAMP NULL,
      deleted_at TIMESTAMP NULL
    ) DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci
    """,
    """
    CREATE TABLE account_writes (
      n BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
      session_id VARCHAR(255) NOT NULL,
      url VARCHAR(255) NULL,
      idx TINYINT NULL
    )
    """,
    """
    CREATE TRIGGER log_account_write AFTER UPDATE ON whatsapp_accounts FOR EACH ROW
      INSERT INTO account_writes (session_id, url, idx)
      VALUES (NEW.session_id, NEW.assigned_instance_url, NEW.assigned_instance_index)
    """,
)


@dataclass
class AccountsDB:
    name: str
    conn: aiomysql.Connection

    @property
    def dsn(self) -> str:
        return f"mysql://root@127.0.0.1:3306/{self.name}"

    def dsn_via(self, address: str) -> str:
        """The DSN through a relay at ``host:port``."""
        return f"mysql://root@{address}/{self.name}"

    async def query(self, sql: str, args: Iterable[Any] = ()) -> list[tuple[Any, ...]]:
        async with self.conn.cursor() as cur:
            await cur.execute(sql, tuple(args))
            return list(await cur.fetchall())

    async def insert(
        self,
        session_id: str,
        url: str | None = None,
        index: int | None = None,
        *,
        provider: str = "webjs",
        status: str = "connected",
        deleted: bool = False,
        workspace_id: int = 1,
    ) -> None:
        await self.insert_many([(session_id, url, index, provider, status, deleted, workspace_id)])

    async def insert_many(self, rows: Iterable[tuple[Any, ...]]) -> None:
        """Rows of (session_id, url, index, provider, status, deleted, workspace_id)."""
        values = [
            (
                str(uuid.uuid4()),
                ws,
                sid,
                provider,
                status,
                index,
                url,
                OLD,
                OLD if deleted else None,
            )
            for sid, url, index, provider, status, deleted, ws in rows
        ]
        async with self.conn.cursor() as cur:
            await cur.executemany(
                "INSERT INTO whatsapp_accounts (uuid, workspace_id, session_id, provider_type,"
                " status, assigned_instance_index, assigned_instance_url, updated_at, deleted_at)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                values,
            )

    async def where(self) -> dict[str, tuple[str | None, int | None]]:
        """Every row's (assigned_instance_url, assigned_instance_index) by session id."""
        rows = await self.query(
            "SELECT session_id, assigned_instance_url, assigned_instance_index"
            " FROM whatsapp_accounts"
        )
        return {sid: (url, index) for sid, url, index in rows}

    async def touched(self) -> set[str]:
        """Session ids of the rows whose updated_at moved."""
        rows = await self.query(
            "SELECT session_id FROM whatsapp_accounts WHERE updated_at <> %s", (OLD,)
        )
        return {sid for (sid,) in rows}

    async def writes(self) -> list[tuple[str, str | None, int | None]]:
        """Every UPDATE the table saw, in order: (session_id, url, index)."""
        rows = await self.query("SELECT session_id, url, idx FROM account_writes ORDER BY n")
        return [(sid, url, idx) for sid, url, idx in rows]

    async def snapshot(self) -> list[tuple[Any, ...]]:
        """The whole table, to prove that nothing changed."""
        return await self.query("SELECT * FROM whatsapp_accounts ORDER BY id")
