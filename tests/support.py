"""Tools for tests that treat the gateway as an outsider would: raw request lines, metrics
read over HTTP, the admin API, and instances that misbehave the way real ones and real
networks do (resets, black holes, trickles)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NoReturn
from urllib.parse import urlsplit

import aiohttp
import pytest
from aiohttp import web
from multidict import CIMultiDict
from prometheus_client.parser import text_string_to_metric_families

from tests.harness import Seen, recording, serve

ADMIN_TOKEN = "admin-secret"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
HEALTHY = {"status": "healthy", "sessions": {"total": 0, "connected": 0, "disconnected": 0}}


@dataclass(frozen=True)
class RawReply:
    status: int
    headers: CIMultiDict[str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def _dechunk(data: bytes) -> bytes:
    out = b""
    while data:
        size, _, data = data.partition(b"\r\n")
        n = int(size.split(b";")[0], 16)
        if n == 0:
            break
        out, data = out + data[:n], data[n + 2 :]
    return out


async def raw_http(
    base_url: str,
    target: str | bytes,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
) -> RawReply:
    """Send one request line exactly as given (no client normalises it) and read the answer."""
    parts = urlsplit(base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    reader, writer = await asyncio.open_connection(host, port)
    raw_target = target if isinstance(target, bytes) else target.encode("latin-1")
    lines = [f"Host: {host}:{port}", "Connection: close", f"Content-Length: {len(body)}"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    head = method.encode() + b" " + raw_target + b" HTTP/1.1\r\n"
    writer.write(head + "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n" + body)
    try:
        data = await reader.read()
    finally:
        writer.close()
    status_line, _, rest = data.partition(b"\r\n")
    head_bytes, _, payload = rest.partition(b"\r\n\r\n")
    answer: CIMultiDict[str] = CIMultiDict()
    for line in head_bytes.split(b"\r\n"):
        if line:
            name, _, value = line.decode("latin-1").partition(":")
            answer.add(name.strip(), value.strip())
    if answer.get("Transfer-Encoding", "").lower() == "chunked":
        payload = _dechunk(payload)
    elif "Content-Length" in answer and method != "HEAD":
        payload = payload[: int(answer["Content-Length"])]
    return RawReply(int(status_line.split()[1]), answer, payload)


async def metric(
    http: aiohttp.ClientSession, base_url: str, name: str, **labels: str
) -> float | None:
    """A sample of the gateway's ``/metrics`` (summed over unnamed labels); None if absent."""
    async with http.get(f"{base_url}/metrics") as resp:
        text = await resp.text()
    values = [
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
    ]
    return sum(values) if values else None


async def admin(
    http: aiohttp.ClientSession, base_url: str, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    async with http.request(method, f"{base_url}{path}", headers=ADMIN, **kwargs) as resp:
        return resp.status, await resp.json()


async def pin(http: aiohttp.ClientSession, base_url: str, session_id: str, url: str) -> None:
    """Pin a session by hand through the admin API."""
    status, body = await admin(
        http, base_url, "PUT", f"/gateway/sessions/{session_id}", json={"instance": url}
    )
    assert status == 200, body


async def pinned(http: aiohttp.ClientSession, base_url: str, session_id: str) -> str | None:
    """Where a gateway process says the session is pinned (its own view)."""
    status, body = await admin(http, base_url, "GET", f"/gateway/sessions/{session_id}")
    return body["instance"] if status == 200 else None


async def instance_up(http: aiohttp.ClientSession, base_url: str, url: str) -> bool:
    """Whether the gateway counts the instance as up, from its ``/health``."""
    async with http.get(f"{base_url}/health") as resp:
        body = await resp.json()
    return any(i["url"] == url and i["up"] for i in body["instances"])


Answer = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass
class StandIn:
    """An instance stand-in: healthy ``/health``, every other call recorded and answered."""

    url: str
    seen: list[Seen]
    health: dict[str, Any]

    def forwarded(self) -> list[Seen]:
        return [s for s in self.seen if not s.path_qs.startswith(("/health", "/api/sessions?"))]


async def ok(request: web.Request) -> web.Response:
    return web.json_response({"success": True})


async def stand_in(
    teardown: contextlib.AsyncExitStack, answer: Answer = ok, prefix: str = ""
) -> StandIn:
    """Serve a stand-in instance until the test ends, optionally under a path prefix."""
    seen: list[Seen] = []
    body = dict(HEALTHY)
    app = web.Application(middlewares=[recording(seen)])

    async def health(_: web.Request) -> web.Response:
        return web.json_response(body)

    app.router.add_get(f"{prefix}/health", health)
    app.router.add_route("*", f"{prefix}/{{tail:.*}}", answer)
    runner, url = await serve(app)
    teardown.push_async_callback(runner.cleanup)
    return StandIn(url + prefix, seen, body)


# --- instances at the TCP level ------------------------------------------------------------


@dataclass(frozen=True)
class RawRequest:
    method: str
    target: str
    body: bytes
    reused: bool  # an earlier request came over the same connection
    idle: float  # seconds the connection was idle before this request


Decide = Callable[[RawRequest], "tuple[int, dict[str, Any]] | None"]


def reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP reset, as a crashed or impatient server does."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class RawInstance:
    """A bare keep-alive HTTP/1.1 server: ``decide`` answers a request, or resets (None).

    aiohttp's server cannot drop a connection the way a Node instance does when its
    keep-alive timer fires, or reset a request half-way; this one can. ``/health`` is
    always answered healthy.
    """

    def __init__(self, decide: Decide) -> None:
        self.decide = decide
        self.answered: list[RawRequest] = []
        self.connections = 0
        self.url = ""
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self, teardown: contextlib.AsyncExitStack) -> RawInstance:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        teardown.push_async_callback(self.close)
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in self._writers:
                writer.transport.abort()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        served, idle_since = 0, time.monotonic()
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                length = next(
                    (
                        int(v)
                        for k, _, v in (x.partition(":") for x in lines[1:])
                        if k.strip().lower() == "content-length"
                    ),
                    0,
                )
                body = await reader.readexactly(length)
                request = RawRequest(
                    method, target, body, served > 0, time.monotonic() - idle_since
                )
                answer = (200, HEALTHY) if target == "/health" else self.decide(request)
                if answer is None:
                    reset(writer)
                    return
                if target != "/health":
                    self.answered.append(request)
                payload = json.dumps(answer[1]).encode()
                writer.write(
                    f"HTTP/1.1 {answer[0]} X\r\nContent-Type: application/json\r\n"
                    f"Content-Length: {len(payload)}\r\nConnection: keep-alive\r\n\r\n".encode()
                    + payload
                )
                await writer.drain()
                served, idle_since = served + 1, time.monotonic()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


class BlackHole:
    """A port where connections are never accepted: SYNs are dropped, connects time out.

    A listening socket with a backlog of 0 and one connection already waiting in it; the
    kernel then drops further SYNs, which is what a firewalled or frozen host looks like.
    """

    def __init__(self, port: int) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(0)
        self.filler = socket.create_connection(("127.0.0.1", port), timeout=1)

    def close(self) -> None:
        self.filler.close()
        self.listener.close()


def unavailable(why: str) -> NoReturn:
    """Skip with the reason on a machine without a tool the suite needs (PHP, promtool);
    fail in CI, where .ci/run installs them."""
    if os.environ.get("CI"):
        pytest.fail(why)
    pytest.skip(why)
