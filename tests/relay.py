"""A TCP relay a test controls: ``127.0.0.1:<port>`` → ``host:port``, with cut() and restore().

Point a client at the relay instead of the server, then ``cut()`` its path as a network
partition would: nothing more crosses in either direction, open connections hang (they are
not closed) and new ones are accepted but get nothing, so the client meets its own
timeouts. ``reset()`` is a server that went down instead: open connections are reset (RST)
and new ones are reset at once, so the client fails fast. ``restore()`` lets everything
through again, held bytes included. ``sent`` and ``received`` count the bytes that crossed,
to prove that a client made no call at all.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct

from dev.ports import free_port


def _abort(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class Relay:
    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.sent = 0  # bytes from clients to the server
        self.received = 0  # bytes from the server to clients
        self.connections = 0
        self._open = asyncio.Event()
        self._open.set()
        self._down = False  # reset(): connections are reset instead of held
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> Relay:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
        for writer in self._writers:
            writer.close()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await task
        if self._server is not None:
            await self._server.wait_closed()

    def cut(self) -> None:
        self._open.clear()

    def reset(self) -> None:
        """Reset every open connection, and every new one until :meth:`restore`."""
        self._down = True
        for writer in list(self._writers):
            _abort(writer)

    def restore(self) -> None:
        self._down = False
        self._open.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._down:
            _abort(writer)
            return
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self._writers.add(writer)
        self.connections += 1
        upstream: asyncio.StreamWriter | None = None
        try:
            await self._open.wait()
            up_reader, upstream = await asyncio.open_connection(*self.target)
            self._writers.add(upstream)
            await asyncio.gather(
                self._pump(reader, upstream, "sent"), self._pump(up_reader, writer, "received")
            )
        except OSError:
            pass
        finally:
            for w in (writer, upstream):
                if w is not None:
                    w.close()
                    self._writers.discard(w)
            self._tasks.discard(task)

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, counter: str
    ) -> None:
        try:
            while chunk := await reader.read(65536):
                await self._open.wait()
                setattr(self, counter, getattr(self, counter) + len(chunk))
                writer.write(chunk)
                await writer.drain()
        finally:
            writer.close()
