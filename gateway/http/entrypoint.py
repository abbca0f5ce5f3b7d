"""The entry point: connections on the gateway's port, read with llhttp.

The instance API is the gateway's hot path, and aiohttp's general machinery (a request
object, a task, a response object and its header bookkeeping per request) costs more than
the forwarding itself. So each connection starts as an ``Entry``: it reads requests with
``httptools`` (llhttp, the parser aiohttp's own C parser wraps) and hands the plain ones
(a path-only target, a ``Content-Length`` body within the limit, no ``Expect``, no
upgrade) straight to the instance API's handler, writing each answer as one buffer.

Everything else goes to aiohttp: the first request that is the app's own (``/metrics``,
the admin API, the webhook route), that is unusual in any way, or that llhttp refuses
makes the connection hand itself, with every byte not yet answered, to aiohttp's own
connection handler, which serves it from then on exactly as before. Bytes are only ever
consumed one whole request at a time (the head is found first, then exactly its body),
so what is handed over is the request as the caller sent it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from email.utils import formatdate
from http import HTTPStatus
from typing import Any

import httptools
from aiohttp import web

from gateway.http.aiohttp_internals import HandOverServer
from gateway.http.answers import Answer, Relayed

log = logging.getLogger("gateway.http")

PIPELINED = 16  # requests read ahead of their answers before reading pauses
READ_AHEAD = 1 << 20  # bytes of bodies read ahead of the answer under way before it pauses
KEEPALIVE = 3630.0  # aiohttp's default: the same for a connection before and after a hand-over
LINGER = 10.0  # aiohttp's lingering_time: how long the body of a refused request is dropped
# Headers picked out while parsing: the instance API reads these on every request.
KNOWN = frozenset(
    {
        b"host",
        b"content-type",
        b"content-length",
        b"content-encoding",
        b"x-request-id",
        b"idempotency-key",
    }
)
# Requests with one of these are aiohttp's: it decodes chunks, says 100 Continue, upgrades,
# and refuses the old WebSocket handshake. (A compressed body is read as it came, by both.)
AIOHTTPS = frozenset({b"transfer-encoding", b"expect", b"upgrade", b"sec-websocket-key1"})
# Headers aiohttp refuses to see twice in one request (a 400).
SINGLETONS = frozenset(
    {
        b"content-length",
        b"content-location",
        b"content-range",
        b"content-type",
        b"etag",
        b"host",
        b"max-forwards",
        b"server",
        b"transfer-encoding",
        b"user-agent",
    }
)
HOT_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}

Serve = Callable[["EntryRequest"], Awaitable[Answer]]


class EntryRequest:
    """The part of ``aiohttp.web.Request`` the instance API reads, for a request an
    ``Entry`` read itself."""

    __slots__ = (
        "_body",
        "_known",
        "_state",
        "host",
        "keep_alive",
        "method",
        "raw_headers",
        "raw_path",
        "remote",
        "version",
    )
    scheme = "http"

    def __init__(
        self,
        method: str,
        raw_path: str,
        raw_headers: list[tuple[bytes, bytes]],
        known: dict[bytes, bytes],
        body: bytes,
        host: str,
        remote: str | None,
        version: str,
        keep_alive: bool,
    ) -> None:
        self.method, self.raw_path, self.raw_headers = method, raw_path, raw_headers
        self.host, self.remote, self.version, self.keep_alive = host, remote, version, keep_alive
        self._known, self._body = known, body
        self._state: dict[Any, Any] = {}

    @property
    def headers(self) -> _RawLookup:
        return _RawLookup(self.raw_headers, self._known)

    @property
    def content_type(self) -> str:
        """As aiohttp gives it: the media type, lowercased, without parameters."""
        value = self._known.get(b"content-type")
        if value is None:
            return "application/octet-stream"
        return value.partition(b";")[0].strip().lower().decode("utf-8", "surrogateescape")

    async def read(self) -> bytes:
        return self._body

    def __getitem__(self, key: Any) -> Any:
        return self._state[key]

    def __setitem__(self, key: Any, value: Any) -> None:
        self._state[key] = value

    def get(self, key: Any, default: Any = None) -> Any:
        return self._state.get(key, default)


class _RawLookup:
    """Case-insensitive ``get`` over raw headers (the first of a name), without building a
    dict per request: the few the instance API reads were picked out while parsing."""

    __slots__ = ("_known", "_raw")

    def __init__(self, raw: list[tuple[bytes, bytes]], known: dict[bytes, bytes]) -> None:
        self._raw, self._known = raw, known

    def get(self, name: str, default: str | None = None) -> str | None:
        wanted = name.lower().encode("ascii")
        if wanted in KNOWN:
            value = self._known.get(wanted)
            return default if value is None else value.decode("utf-8", "surrogateescape")
        for key, value in self._raw:
            if key.lower() == wanted:
                return value.decode("utf-8", "surrogateescape")
        return default


class EntryServer(HandOverServer):
    """aiohttp's ``Server`` whose connections start as ``Entry``s (the ``fast`` engine).

    An ``Entry`` hands its connection over to aiohttp's own connection handler
    (``aiohttp_connection``) when aiohttp must serve it; ``hot`` says whether a path is the
    instance API's; ``serve`` answers one request of it.
    """

    def __init__(self, *args: Any, max_body: int, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.max_body = max_body
        self.keepalive = float(kwargs.get("keepalive_timeout", KEEPALIVE))
        # Within aiohttp's limits whatever they are: a longer head, or more headers, goes to
        # aiohttp, which refuses a line or a field over its limit.
        self.max_head = min(kwargs.get("max_line_size", 8190), kwargs.get("max_field_size", 8190))
        self.max_headers = kwargs.get("max_headers", 128)
        self.hot: Callable[[str], bool] = lambda path: False  # until the app says
        self.serve: Serve | None = None
        self.entries: set[Entry] = set()
        self._sweeper: asyncio.TimerHandle | None = None

    def connection(self) -> Entry:
        return Entry(self)

    async def shutdown(self, timeout: float | None = None) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        await asyncio.gather(
            super().shutdown(timeout), *(entry.shutdown(timeout) for entry in list(self.entries))
        )

    def watch_idle(self) -> None:
        """Close connections idle past ``keepalive``: one sweep a second for all of them,
        instead of a timer per answer."""
        if self._sweeper is None:
            self._sweeper = asyncio.get_running_loop().call_later(1.0, self._sweep)

    def _sweep(self) -> None:
        self._sweeper = None
        now = asyncio.get_running_loop().time()
        for entry in list(self.entries):
            if entry.worker is None and now - entry.active_at >= self.keepalive:
                entry.close()  # idle that long, or that long sending one request
        if self.entries:
            self.watch_idle()


class Entry(asyncio.Protocol):
    """One connection while it is read by the gateway itself (see the module's text)."""

    def __init__(self, server: EntryServer) -> None:
        self.server = server
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.buffer = b""  # received, not yet parsed: the start of a request
        self.answering: deque[EntryRequest | None] = deque()  # None: hand over there
        self.worker: asyncio.Task[None] | None = None
        self.active_at = self.loop.time()  # when the last request began or answer went out
        self.host, self.remote = "", None
        self._writable: asyncio.Future[None] | None = None
        self._paused = False
        self._done = False  # read nothing more: closing, shutting down, or told it is the last
        self._eof = False  # the caller sent its last byte
        self._lost = False  # the connection is gone
        self._stopping = False  # the server shuts down
        self._handing = False  # the connection goes to aiohttp once its answers are out
        self._scanned = 0  # bytes of the buffer searched for the end of a head
        self._keep_alive = True
        # The request being read: its head's parts, then its body.
        self._url = b""
        self._headers: list[tuple[bytes, bytes]] = []
        self._body: list[bytes] = []
        self._body_left = 0
        self._in_body = False
        self._hot = False
        self._oversized = False  # declares a body over the limit: refused from its head
        self._complete = False
        self._known: dict[bytes, bytes] = {}

    # --- transport events -------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.remote = peer[0] if isinstance(peer, tuple | list) and peer else None
        local = transport.get_extra_info("sockname")
        if isinstance(local, tuple | list) and len(local) >= 2:
            host = f"[{local[0]}]" if ":" in str(local[0]) else str(local[0])
            self.host = f"{host}:{local[1]}"
        self.server.entries.add(self)
        self.server.watch_idle()

    def connection_lost(self, exc: Exception | None) -> None:
        self._done = self._lost = True
        self.buffer = b""
        self.server.entries.discard(self)
        # Requests read but not started are dropped, as aiohttp does when the caller leaves.
        while len(self.answering) > (1 if self.worker is not None else 0):
            self.answering.pop()
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        # A request being answered is not cancelled (as aiohttp's handler_cancellation
        # off): a send in flight goes on to its end; its answer has nowhere to go.

    def pause_writing(self) -> None:
        self._writable = self.loop.create_future()

    def resume_writing(self) -> None:
        if self._writable is not None and not self._writable.done():
            self._writable.set_result(None)
        self._writable = None

    def eof_received(self) -> bool:
        """Half-closed: answer what was asked, then close."""
        self._eof = True
        if self.worker is None and not self._handing:
            self.close()  # nothing asked (or half a request): nothing to answer
        return True

    def data_received(self, data: bytes) -> None:
        if self._done:
            return
        if self.buffer:  # the rest of a request begun in an earlier segment
            data, self.buffer = self.buffer + data, b""
        elif not self._in_body:
            self.active_at = self.loop.time()  # a request begins: it has keep-alive to arrive
        self._read_requests(data)
        if self.answering and not self._paused and self.held_ahead > READ_AHEAD:
            self._paused = True  # the rest waits in the socket until answers catch up
            if self.transport is not None:
                self.transport.pause_reading()

    @property
    def held_ahead(self) -> int:
        """Bytes held for requests not yet being answered: those waiting their turn, the
        body being read, and what is not parsed yet. Reading pauses past ``READ_AHEAD``
        while an answer is under way, as aiohttp's flow control does."""
        waiting = sum(len(r._body) for r in self.answering if r is not None)
        if self.worker is not None and self.answering and self.answering[0] is not None:
            waiting -= len(self.answering[0]._body)  # the one under way
        return waiting + sum(map(len, self._body)) + len(self.buffer)

    # --- reading: one whole request at a time -----------------------------------------------

    def _read_requests(self, data: bytes) -> None:
        """Parse what ``data`` holds, never past the end of a request whose answer decides
        what comes next; keep the rest (as the caller sent it) for later or for aiohttp."""
        pos, size, view = 0, len(data), memoryview(data)
        while pos < size and not self._done and not self._handing:
            if not self._in_body:
                end = data.find(b"\r\n\r\n", pos + self._scanned)
                if end < 0:
                    self._scanned = max(0, size - pos - 3)  # a head sent byte by byte
                    if size - pos > self.server.max_head or _bare_lf(data, pos, size):
                        self._hand_over()  # a long head, or bare LFs: aiohttp refuses them
                    break
                self._scanned = 0
                if end + 4 - pos > self.server.max_head or _bare_lf(data, pos, end):
                    self._hand_over()
                    break
                self._url, self._headers, self._body = b"", [], []
                self._hot = self._complete = False
                try:
                    self.parser.feed_data(view[pos : end + 4])
                except (httptools.HttpParserError, httptools.HttpParserUpgrade):
                    self._hot = False
                if not self._hot:
                    self._hand_over()  # from this head on, as the caller sent it
                    break
                pos = end + 4
                if self._oversized:  # answered from its head; its body is never read
                    self._keep_alive, self._complete = False, True
                self._in_body = not self._complete
            else:
                take = min(size - pos, self._body_left)
                self._body_left -= take
                try:
                    self.parser.feed_data(view[pos : pos + take])
                except httptools.HttpParserError:  # llhttp took the head: cannot happen
                    self.close()
                    return
                pos += take
            if self._complete:
                self._in_body = False
                self._queue(self._request())
        view.release()
        if pos < size and not self._done:
            self.buffer = data[pos:]

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value.rstrip(b" \t")))  # llhttp keeps trailing OWS

    def on_headers_complete(self) -> None:
        parser = self.parser
        method = parser.get_method().decode("ascii", "replace")
        self._body_left = 0
        self._keep_alive = parser.should_keep_alive()
        known: dict[bytes, bytes] = {}
        once: set[bytes] = set()
        for name, value in self._headers:
            lowered = name.lower()
            if lowered in SINGLETONS:
                if lowered in once:
                    return  # aiohttp refuses a second one
                once.add(lowered)
            if lowered == b"content-length":  # one only (a singleton)
                self._body_left = int(value)  # llhttp checked it is one decimal number
                known[lowered] = value
            elif lowered in KNOWN:
                known.setdefault(lowered, value)  # the first, as aiohttp's get() gives
            elif lowered in AIOHTTPS:
                return
        version = parser.get_http_version()
        if version == "1.1" and b"host" not in once:
            return  # aiohttp refuses it
        self._known = known
        path = self._url.partition(b"?")[0]
        self._hot = (
            len(self._headers) <= self.server.max_headers
            and method in HOT_METHODS
            and version in ("1.1", "1.0")
            and path[:1] == b"/"
            and path[:2] != b"//"
            and b"%" not in path
            and b"#" not in self._url
            and self.server.hot(path.decode("ascii", "replace"))
        )
        self._oversized = self._hot and self._body_left > self.server.max_body

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        self._complete = True

    def _request(self) -> EntryRequest:
        host = self._known.get(b"host")
        request = EntryRequest(
            self.parser.get_method().decode("ascii"),
            self._url.decode("ascii", "surrogateescape"),
            self._headers,
            self._known,
            b"".join(self._body),
            host.decode("utf-8", "surrogateescape") if host else self.host,
            self.remote,
            self.parser.get_http_version(),
            self._keep_alive,
        )
        self._headers, self._body = [], []  # the request holds them now, not the connection
        return request

    # --- answering, in order ----------------------------------------------------------------

    def _queue(self, request: EntryRequest | None) -> None:
        self.answering.append(request)
        if request is not None and not self._keep_alive:
            self._done = True  # the caller said this one is its last
        if len(self.answering) >= PIPELINED and not self._paused and self.transport:
            self._paused = True
            self.transport.pause_reading()
        if self.worker is None:
            self.worker = self.loop.create_task(self._answer_all())

    def _hand_over(self) -> None:
        """Stop reading; once the answers before it are out, the rest is aiohttp's."""
        self._handing = True
        self._queue(None)
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    async def _answer_all(self) -> None:
        try:
            while self.answering and not self._lost:
                request = self.answering[0]
                if request is None:
                    if self._writable is not None:
                        await self._writable  # aiohttp could not know the caller lags
                    if not (self._stopping or self._lost):
                        self._give_to_aiohttp()
                    return
                try:
                    response = await self.server.serve(request)
                    if self._writable is not None:
                        await self._writable
                    self._write(request, response)
                except Exception:
                    log.exception("could not answer a request; the connection is closed")
                    self.close()
                    return
                self.answering.popleft()
                resume = (
                    len(self.answering) < PIPELINED // 2
                    and not self._handing
                    and (not self.answering or self.held_ahead <= READ_AHEAD)
                )
                if self._paused and resume and self.transport:
                    self._paused = False
                    self.transport.resume_reading()
            if self._oversized and not (self._eof or self._lost):
                self._linger()
            elif self._done or self._eof:
                self.close()
            else:
                self.active_at = self.loop.time()
        finally:
            self.worker = None

    def _write(self, request: EntryRequest, response: Answer) -> None:
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        status, reason = response.status, REASONS.get(response.status, b"")
        lines = [b"HTTP/%s %d %s\r\n" % (request.version.encode(), status, reason)]
        if isinstance(response, Relayed):  # the instance's headers go out as they came in
            body, dated, sized = response.body, response.dated, bool(response.sized)
            lines.extend([b"%s: %s\r\n" % pair for pair in response.kept])
            if sized:
                lines.append(b"Content-Length: %s\r\n" % response.sized)
        else:
            body = _body(response)
            dated, sized = "Date" in response.headers, "Content-Length" in response.headers
        for name, value in response.headers.items():
            if "\r" in value or "\n" in value:
                raise ValueError("a header value holds a line break")
            lines.append(f"{name}: {value}\r\n".encode("utf-8", "surrogateescape"))
        if not sized and status not in (204, 304):
            lines.append(b"Content-Length: %d\r\n" % len(body))
        if not dated:
            lines.append(_date_line())
        if not request.keep_alive:
            if request.version == "1.1":
                lines.append(b"Connection: close\r\n")
        elif request.version == "1.0":
            lines.append(b"Connection: keep-alive\r\n")
        lines.append(b"\r\n")
        if not (request.method == "HEAD" or status in (204, 304)):
            lines.append(body)
        transport.write(b"".join(lines))

    def _give_to_aiohttp(self) -> None:
        """From the first request not answered on: aiohttp's connection handler."""
        transport = self.transport
        self.server.entries.discard(self)
        if transport is None or transport.is_closing():
            return
        handler = self.server.aiohttp_connection()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._paused and not self._eof:  # after an EOF, reading again reads it again
            self._paused = False
            transport.resume_reading()
        if self.buffer:
            handler.data_received(self.buffer)
            self.buffer = b""
        if self._eof:
            handler.eof_received()  # answer what it has, then close, as the caller is done

    # --- closing ----------------------------------------------------------------------------

    def _linger(self) -> None:
        """After refusing a body from its head: end the answer with a FIN, then drop what
        the caller still sends until it closes (or ``LINGER`` passes), so the refusal is
        not lost to a reset as it would be by closing with the body unread."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        if transport.can_write_eof():
            transport.write_eof()
        self.loop.call_later(LINGER, self.close)

    def close(self) -> None:
        self._done = True
        self.server.entries.discard(self)
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    async def shutdown(self, timeout: float | None) -> None:
        """Read nothing more; let the answers under way finish (up to ``timeout``, then
        they are cancelled, as aiohttp does)."""
        self._done = self._stopping = True
        worker = self.worker
        if worker is not None:
            try:
                await asyncio.wait_for(asyncio.shield(worker), timeout)
            except TimeoutError:
                worker.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await worker
            except Exception:
                pass  # the worker logged its own failure
        self.close()


def _bare_lf(data: bytes, start: int, end: int) -> bool:
    """Whether a line of a head ends in LF alone: llhttp (in aiohttp too) refuses it with a
    400, so it is handed over rather than waited on as a head without its end."""
    return data.count(b"\n", start, end) != data.count(b"\r\n", start, end)


def _body(response: web.StreamResponse) -> bytes:
    body = response.body if isinstance(response, web.Response) else None
    if body is None:
        return b""
    if not isinstance(body, bytes | bytearray):
        log.error("an answer with a body not in bytes: %s", type(body).__name__)
        return b""
    return bytes(body)


_date_cache: tuple[int, bytes] = (0, b"")


def _date_line() -> bytes:
    """``Date: ...`` for this second, formatted once a second."""
    global _date_cache
    now = int(time.time())
    if _date_cache[0] != now:
        _date_cache = (now, f"Date: {formatdate(now, usegmt=True)}\r\n".encode("ascii"))
    return _date_cache[1]
