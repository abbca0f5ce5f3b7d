"""The unit tier stays pure: a test here that reaches for a server fails, it does not wait."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def no_connections(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Refuse every outgoing connection (Redis, MariaDB, an instance): such a test belongs
    in tests/gateway/ or tests/workers/."""

    def refuse(self: socket.socket, address: object) -> None:
        raise AssertionError(f"a unit test connected to {address!r}: move it out of tests/unit")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    yield
