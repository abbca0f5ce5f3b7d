"""Keep-alive connections to one instance: asyncio protocols and a C HTTP parser.

A proxy needs far less than a general HTTP client: the request is already bytes, the answer
is read whole, and the one thing that must be exact is whether the request can have reached
the instance, since that decides whether it may go elsewhere. So the pool writes requests
itself and parses answers with ``httptools`` (llhttp, the parser Node uses), with no URL
objects, cookie jar, tracing hooks or response streams per call.

What it keeps from a careful client: a cap on open connections with a FIFO of waiters,
idle connections dropped after ``keepalive`` seconds (below the instance's own timeout, so
it is never the instance that closes one under a request), a pooled connection found closed
skipped before anything is written, an idempotent request cut on a reused connection before
any answer sent once more on a fresh one (what aiohttp does), one deadline for the whole
call, interim ``1xx`` answers skipped, chunked bodies decoded, answers to ``HEAD`` without a
body whatever their ``Content-Length`` says.
"""

from __future__ import annotations

import asyncio
import json
import math
import socket
import ssl
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
from multidict import CIMultiDict

from gateway.http.headers import decoded

# Failures in which the request surely never left the gateway.
NOT_SENT = frozenset({"refused", "connect_timeout", "dns", "tls"})
# RFC 9110 §9.2.2; the methods aiohttp also sends again after a cut on a reused connection.
IDEMPOTENT_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
# How often a pool with calls in flight looks for one past its deadline: a deadline is met
# at most this late. One sweep per pool instead of a timer per call (a timer per call costs
# uvloop a libuv handle made and closed on every request).
SWEEP = 0.025


class Failure(Exception):
    """No answer. ``kind``: refused, connect_timeout, dns, tls (nothing was sent), or
    timeout, reset, bad_response (the request went out and may have been acted on)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind} ({detail})")
        self.kind, self.detail = kind, detail

    @property
    def sent(self) -> bool:
        return self.kind not in NOT_SENT


@dataclass(frozen=True, slots=True)
class Reply:
    """An instance's whole answer."""

    status: int
    raw_headers: list[tuple[bytes, bytes]]  # as the instance sent them, in order
    body: bytes  # de-chunked, never decompressed

    @property
    def headers(self) -> CIMultiDict[str]:
        return decoded(self.raw_headers)

    def json(self) -> Any:
        """The body as JSON, or None when it is not JSON."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError):
            return None

    @property
    def session_not_found(self) -> bool:
        """The instance's way of saying it does not hold the session (nothing was done)."""
        if self.status != 404:
            return False
        body = self.json()
        return isinstance(body, dict) and body.get("error") == "Session not found"


class _Cut(Exception):
    """The connection closed before any byte of the answer (maybe worth one more try)."""


class _Stale(Exception):
    """The pooled connection was found closing before anything was written to it."""


class Connection(asyncio.Protocol):
    """One keep-alive connection; carries one exchange at a time."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.counted = False  # counted in the pool's ``open``
        self.idle = False  # in the pool's idle queue
        self.reused = False
        self.idle_since = 0.0
        self.deadline = math.inf  # of the exchange in flight (loop time)
        self._waiter: asyncio.Future[Reply] | None = None
        # One parser for the connection's life: answers follow one another on it.
        self._parser = httptools.HttpResponseParser(self)
        self._head = False
        self._status = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._received = False
        self._headers_done = False
        self._keep_alive = True
        self._until_eof = False

    # --- transport events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None:  # nothing asked: an instance that talks out of turn
            self.close()
            return
        self._received = True
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._fail(Failure("bad_response", str(exc) or type(exc).__name__))

    def eof_received(self) -> bool:
        return False  # close our side too; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool._lost(self)
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._headers_done and self._until_eof:  # a body delimited by the close
            self._complete()
        elif not self._received:
            self._fail(_Cut())
        else:
            self._fail(Failure("reset", str(exc) if exc else "connection closed mid-answer"))

    # --- parser callbacks -------------------------------------------------------------------

    def on_message_begin(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # bytes past the answer: out of step, retired
            self._keep_alive = False
        self._headers, self._body, self._headers_done = [], [], False

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._status = self._parser.get_status_code()
        self._headers_done = True
        framed = False
        for name, value in self._headers:
            lowered = name.lower()
            if lowered == b"connection" and b"close" in value.lower():
                self._keep_alive = False
            elif lowered in (b"content-length", b"transfer-encoding"):
                framed = True
        if self._parser.get_http_version() == "1.0":
            self._keep_alive = False
        no_body = self._head or self._status in (204, 304) or 100 <= self._status < 200
        self._until_eof = not framed and not no_body
        if self._until_eof:
            self._keep_alive = False
        if self._head and self._status >= 200:
            # llhttp would wait for the Content-Length it announces: the answer ends here,
            # and the connection cannot be trusted to be in step any more.
            self._keep_alive = False
            self._complete()

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        if 100 <= self._status < 200 and self._status != 101:
            return  # an interim answer (100 Continue): the real one follows
        self._complete()

    # --- one exchange -----------------------------------------------------------------------

    async def exchange(self, request: bytes, head: bool, deadline: float) -> Reply:
        """Write ``request`` and wait for its whole answer, until ``deadline`` (loop time)."""
        assert self.transport is not None
        if self.closed or self.transport.is_closing():
            self.close()
            raise _Stale
        self._waiter = waiter = self.pool.loop.create_future()
        self._head, self._received, self._headers_done = head, False, False
        self._keep_alive, self._until_eof = True, False
        self.deadline = deadline
        self.pool._watch()
        self.transport.write(request)
        try:
            return await waiter
        finally:
            self.deadline = math.inf
            self._waiter = None
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                self.close()  # cancelled or failed half-way: its state is unknown
            elif self._keep_alive and not self.closed:
                self.pool._release(self)
            else:
                self.close()

    def _complete(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self._keep_alive = False  # more than one answer to one request: out of step
        else:
            body = b"".join(self._body) if len(self._body) != 1 else self._body[0]
            waiter.set_result(Reply(self._status, self._headers, body))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def expire(self) -> None:
        self._fail(Failure("timeout", "no whole answer within the deadline"))

    def close(self) -> None:
        if self.transport is not None and not self.closed:
            self.closed = True
            self.transport.close()
            self.pool._lost(self)


class ConnectionPool:
    """Connections to one ``host:port``, at most ``limit`` open, idle ones kept ``keepalive``."""

    def __init__(
        self,
        host: str,
        port: int,
        *,
        tls: ssl.SSLContext | None,
        limit: int,
        keepalive: float,
        connect_timeout: float,
        on_wait: Callable[[float], None] | None = None,
    ) -> None:
        self.host, self.port, self.tls = host, port, tls
        self.limit, self.keepalive, self.connect_timeout = limit, keepalive, connect_timeout
        self.on_wait = on_wait
        self.loop = asyncio.get_running_loop()
        self.open = 0  # connections open, being opened, or promised to a waiter
        self._idle: deque[Connection] = deque()  # newest on the right
        self._busy: set[Connection] = set()
        self._waiters: deque[asyncio.Future[Connection | None]] = deque()
        self._sweeper: asyncio.TimerHandle | None = None
        self._closed = False

    async def send(self, request: bytes, method: bytes, deadline: float) -> Reply:
        """One request (head and body, as bytes) and its whole answer; raises ``Failure``.

        ``deadline`` (loop time) bounds all of it: the wait for a connection, connecting,
        writing and reading.
        """
        head = method == b"HEAD"
        conn = self._idle_one() or await self._acquire(deadline)
        try:
            return await conn.exchange(request, head, deadline)
        except _Stale:
            pass  # nothing written: safe to send on a fresh connection, whatever the method
        except _Cut:
            if not (conn.reused and method in IDEMPOTENT_METHODS):
                raise Failure("reset", "connection closed before any answer") from None
        conn = await self._acquire(deadline)
        try:
            return await conn.exchange(request, head, deadline)
        except _Stale:
            raise Failure("refused", "the connection closed before the request") from None
        except _Cut:
            raise Failure("reset", "connection closed before any answer") from None

    async def close(self) -> None:
        self._closed = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for conn in [*self._idle, *self._busy]:
            conn.close()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_exception(Failure("refused", "the pool is closed"))

    # --- deadlines ------------------------------------------------------------------------------

    def _watch(self) -> None:
        """A call is in flight: make sure a sweep will look at its deadline."""
        if self._sweeper is None:
            self._sweeper = self.loop.call_later(SWEEP, self._sweep)

    def _sweep(self) -> None:
        """Fail the calls past their deadline; sweep again while any call is in flight."""
        self._sweeper = None
        now = self.loop.time()
        waiting = False
        for conn in [c for c in self._busy if c.deadline < math.inf]:
            if conn.deadline <= now:
                conn.expire()
            else:
                waiting = True
        if waiting:
            self._watch()

    # --- taking and giving back ---------------------------------------------------------------

    def _idle_one(self) -> Connection | None:
        """The most recently used idle connection still fit to use, if any (no await: the
        common case costs no coroutine)."""
        idle = self._idle
        if not idle:
            return None
        now = self.loop.time()
        while idle:
            conn = idle.pop()
            conn.idle = False
            if conn.closed:
                continue
            if now - conn.idle_since >= self.keepalive:
                conn.close()
                continue
            conn.reused = True
            self._busy.add(conn)
            return conn
        return None

    async def _acquire(self, deadline: float) -> Connection:
        """A new connection, or one given back while waiting for room."""
        if self.open < self.limit:
            self.open += 1
        else:
            handed = await self._wait(deadline)
            if handed is not None:
                return handed
        return await self._connect(deadline)

    async def _wait(self, deadline: float) -> Connection | None:
        """Wait for a connection given back, or for room to open one (None, room taken)."""
        started = self.loop.time()
        waiter: asyncio.Future[Connection | None] = self.loop.create_future()
        self._waiters.append(waiter)
        try:
            async with asyncio.timeout_at(deadline):
                return await waiter
        except BaseException as exc:
            self._give_up(waiter)
            if isinstance(exc, TimeoutError):
                raise Failure(
                    "connect_timeout", f"no free connection (limit {self.limit})"
                ) from None
            raise
        finally:
            if self.on_wait is not None:
                self.on_wait(self.loop.time() - started)

    def _give_up(self, waiter: asyncio.Future[Connection | None]) -> None:
        """A waiter left: pass on what it may have been given meanwhile."""
        if not waiter.done():
            waiter.cancel()
        elif not waiter.cancelled() and waiter.exception() is None:
            handed = waiter.result()
            if handed is None:
                self.open -= 1
                self._wake()
            else:
                self._release(handed)

    async def _connect(self, deadline: float) -> Connection:
        """Open a connection; the room for it is already counted in ``open``."""
        try:
            if self._closed:
                raise Failure("refused", "the pool is closed")
            limit = min(self.loop.time() + self.connect_timeout, deadline)
            async with asyncio.timeout_at(limit):
                transport, conn = await self.loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self.tls,
                    server_hostname=self.host if self.tls else None,
                )
        except BaseException as exc:
            self.open -= 1
            self._wake()
            raise _connect_failure(exc) from None
        conn.transport = transport  # uvloop may call connection_made a little later
        conn.counted = True
        self._busy.add(conn)
        return conn

    def _release(self, conn: Connection) -> None:
        self._busy.discard(conn)
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                conn.reused = True
                self._busy.add(conn)
                waiter.set_result(conn)
                return
        conn.idle_since = self.loop.time()
        conn.idle = True
        self._idle.append(conn)
        while conn.idle_since - self._idle[0].idle_since >= self.keepalive:
            oldest = self._idle.popleft()  # past keep-alive: the instance may drop it any time
            oldest.idle = False
            oldest.close()

    def _lost(self, conn: Connection) -> None:
        if not conn.counted:
            return
        conn.counted = False
        self._busy.discard(conn)
        if conn.idle:
            conn.idle = False
            self._idle.remove(conn)
        self.open -= 1
        self._wake()

    def _wake(self) -> None:
        """Room for one more connection: promise it to the first waiter."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self.open += 1
                waiter.set_result(None)
                return


def _connect_failure(exc: BaseException) -> BaseException:
    if isinstance(exc, TimeoutError):
        return Failure("connect_timeout", "the connection was not made in time")
    if isinstance(exc, socket.gaierror):
        return Failure("dns", str(exc))
    if isinstance(exc, ssl.SSLError | ssl.CertificateError):
        return Failure("tls", str(exc))
    if isinstance(exc, OSError):
        return Failure("refused", str(exc) or type(exc).__name__)
    return exc  # cancellation and the like pass through
