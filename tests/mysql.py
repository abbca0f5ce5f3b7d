"""A MariaDB database of the test's own on 127.0.0.1:3306, dropped afterwards.

CI and other suites share the server, so every test that needs tables gets a fresh
database with a random name.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

import aiomysql

MYSQL = {"host": "127.0.0.1", "port": 3306, "user": "root", "password": ""}


@contextlib.asynccontextmanager
async def own_database(*statements: str) -> AsyncIterator[tuple[str, aiomysql.Connection]]:
    """Create a database, run ``statements`` in it; yields its name and a connection to it."""
    name = f"wa_test_{uuid.uuid4().hex[:16]}"
    conn = await aiomysql.connect(**MYSQL, autocommit=True)
    try:
        async with conn.cursor() as cur:
            await cur.execute(f"CREATE DATABASE `{name}`")
            await cur.execute(f"USE `{name}`")
            for statement in statements:
                await cur.execute(statement)
        yield name, conn
    finally:
        async with conn.cursor() as cur:
            await cur.execute(f"DROP DATABASE IF EXISTS `{name}`")
        conn.close()
