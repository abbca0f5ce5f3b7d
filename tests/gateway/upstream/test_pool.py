"""The connection pool to an instance, against real sockets: framing, keep-alive, the cap,
and which failures can have reached the instance."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from dev.ports import free_port
from gateway.upstream.pool import ConnectionPool, Failure, Reply
from tests.harness import eventually


@dataclass(frozen=True)
class Got:
    """One request as the server read it."""

    method: str
    target: str
    body: bytes
    connection: int  # which connection (1, 2, ...) it came on
    nth: int  # its place on that connection (1, 2, ...)


Script = Callable[[Got], "bytes | None"]  # raw bytes to answer with; None: close, no answer


def ok(body: bytes = b'{"success":true}', *extra: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in extra)
    return f"HTTP/1.1 200 OK\r\n{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


class Scripted:
    """A keep-alive HTTP/1.1 server on a real socket, answering from a script."""

    def __init__(self, script: Script) -> None:
        self.script = script
        self.got: list[Got] = []
        self.connections = 0
        self.current = self.peak = 0  # connections open now / at most
        self.closed = asyncio.Event()  # set whenever the server closes a connection
        self.hang_up_after_answer = False  # close silently, as an idle timer firing does
        self.server: asyncio.Server | None = None

    async def start(self) -> Scripted:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        number, nth = self.connections, 0
        self.current += 1
        self.peak = max(self.peak, self.current)
        try:
            while True:
                head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
                method, target, _ = head[0].split(" ", 2)
                length = sum(
                    int(line.split(":", 1)[1])
                    for line in head[1:]
                    if line.lower().startswith("content-length:")
                )
                nth += 1
                got = Got(method, target, await reader.readexactly(length), number, nth)
                self.got.append(got)
                answer = self.script(got)
                if isinstance(answer, asyncio.Future):
                    answer = await answer
                if answer is None:
                    break
                writer.write(answer)
                await writer.drain()
                if self.hang_up_after_answer or b"Connection: close" in answer:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            self.current -= 1
            writer.close()
            self.closed.set()


@pytest.fixture
async def pools() -> AsyncIterator[Callable[..., ConnectionPool]]:
    made: list[ConnectionPool] = []

    def make(port: int, **options: float) -> ConnectionPool:
        settings = {"limit": 16, "keepalive": 4.0, "connect_timeout": 1.0, **options}
        pool = ConnectionPool("127.0.0.1", port, tls=None, **settings)  # type: ignore[arg-type]
        made.append(pool)
        return pool

    yield make
    for pool in made:
        await pool.close()


@pytest.fixture
async def servers() -> AsyncIterator[Callable[[Script], asyncio.Future[Scripted]]]:
    started: list[Scripted] = []

    async def start(script: Script) -> Scripted:
        server = await Scripted(script).start()
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        assert server.server is not None
        server.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(server.server.wait_closed(), 1)


def request(method: str, target: str = "/x", body: bytes = b"") -> bytes:
    length = f"Content-Length: {len(body)}\r\n" if body or method == "POST" else ""
    return f"{method} {target} HTTP/1.1\r\nHost: i\r\n{length}\r\n".encode() + body


async def call(pool: ConnectionPool, method: str, body: bytes = b"", within: float = 2.0) -> Reply:
    deadline = asyncio.get_running_loop().time() + within
    return await pool.send(request(method, body=body), method.encode(), deadline)


async def test_answers_come_back_whole_over_one_kept_alive_connection(servers, pools):
    chunked = (
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\nSet-Cookie: a=1\r\n"
        b'Set-Cookie: b=2\r\n\r\n4\r\n{"a"\r\n3\r\n:1}\r\n0\r\n\r\n'
    )
    server = await servers(lambda got: chunked if got.nth == 2 else ok(got.body))
    pool = pools(server.port)
    first = await call(pool, "POST", b'{"session_id":"s"}')
    assert (first.status, first.body) == (200, b'{"session_id":"s"}')
    second = await call(pool, "GET")
    assert second.status == 201 and second.body == b'{"a":1}'
    assert second.raw_headers[1:] == [(b"Set-Cookie", b"a=1"), (b"Set-Cookie", b"b=2")]
    await call(pool, "GET")
    assert server.connections == 1 and [g.nth for g in server.got] == [1, 2, 3]


async def test_interim_answers_are_skipped_and_head_answers_have_no_body(servers, pools):
    def script(got: Got) -> bytes:
        if got.method == "HEAD":
            return b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n"
        return b"HTTP/1.1 100 Continue\r\n\r\n" + ok(b"done")

    pool = pools((await servers(script)).port)
    answer = await call(pool, "POST", b"x")
    assert (answer.status, answer.body) == (200, b"done")
    async with asyncio.timeout(2):
        head = await call(pool, "HEAD")
    assert head.body == b"" and (b"Content-Length", b"10") in head.raw_headers
    assert (await call(pool, "GET")).body == b"done"  # after HEAD, on a fresh connection


async def test_an_answer_delimited_by_the_close_is_read_to_the_end(servers, pools):
    server = await servers(lambda got: b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nall of it")
    pool = pools(server.port)
    assert (await call(pool, "GET")).body == b"all of it"
    assert (await call(pool, "GET")).body == b"all of it"
    assert server.connections == 2


async def test_failures_say_whether_the_request_can_have_reached_the_instance(servers, pools):
    with pytest.raises(Failure) as refused:
        await call(pools(free_port()), "POST", b"{}")
    assert refused.value.kind == "refused" and not refused.value.sent

    garbage = await servers(lambda got: b"SMTP ready\r\n\r\n")
    with pytest.raises(Failure) as bad:
        await call(pools(garbage.port), "GET")
    assert bad.value.kind == "bad_response" and bad.value.sent

    hangs_up = await servers(lambda got: None)
    with pytest.raises(Failure) as reset:
        await call(pools(hangs_up.port), "POST", b"{}")
    assert reset.value.kind == "reset" and reset.value.sent
    assert len(hangs_up.got) == 1  # a POST is never sent twice

    never = asyncio.get_running_loop().create_future()
    silent = await servers(lambda got: never)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(Failure) as late:
        await call(pools(silent.port), "GET", within=0.3)
    assert late.value.kind == "timeout" and late.value.sent
    assert 0.25 < loop.time() - started < 1.5


async def test_a_pooled_connection_the_instance_closed_is_not_written_to(servers, pools):
    server = await servers(lambda got: ok())
    server.hang_up_after_answer = True
    pool = pools(server.port)
    await call(pool, "POST", b"{}")
    await asyncio.wait_for(server.closed.wait(), 2)

    async def seen_closed() -> bool:
        return pool.open == 0

    await eventually(seen_closed, timeout=2)
    assert (await call(pool, "POST", b"{}")).status == 200
    assert [(g.connection, g.nth) for g in server.got] == [(1, 1), (2, 1)]


async def test_a_read_cut_on_a_reused_connection_goes_once_more_a_send_does_not(servers, pools):
    """The instance drops the second request on a connection, as a keep-alive race does."""
    server = await servers(lambda got: ok() if got.nth == 1 else None)
    pool = pools(server.port)
    await call(pool, "GET")
    assert (await call(pool, "GET")).status == 200  # again, on a fresh connection
    assert [(g.method, g.nth) for g in server.got] == [("GET", 1), ("GET", 2), ("GET", 1)]

    with pytest.raises(Failure) as cut:
        await call(pool, "POST", b"{}")
    assert cut.value.kind == "reset" and cut.value.sent
    assert [g.method for g in server.got].count("POST") == 1


async def test_connections_idle_past_keepalive_are_not_reused(servers, pools):
    server = await servers(lambda got: ok())
    pool = pools(server.port, keepalive=0.2)
    await call(pool, "GET")
    await call(pool, "GET")
    await asyncio.sleep(0.3)  # idle time is what is under test
    await call(pool, "GET")
    assert [(g.connection, g.nth) for g in server.got] == [(1, 1), (1, 2), (2, 1)]


async def test_connections_are_capped_and_waiters_get_them_in_turn(servers, pools):
    loop = asyncio.get_running_loop()
    holding = False
    held: list[asyncio.Future[bytes]] = []

    def slow(got: Got) -> asyncio.Future[bytes]:
        answer: asyncio.Future[bytes] = loop.create_future()
        if holding:
            held.append(answer)  # answered when the test says, however slow the machine
        else:
            loop.call_later(0.05, answer.set_result, ok())
        return answer

    server = await servers(slow)
    waits: list[float] = []
    pool = pools(server.port, limit=2)
    pool.on_wait = waits.append
    answers = await asyncio.gather(*(call(pool, "GET") for _ in range(6)))
    assert [a.status for a in answers] == [200] * 6
    assert server.peak == 2 and server.connections == 2
    assert len(waits) == 4 and pool.open == 2

    holding = True
    blocked = [asyncio.create_task(call(pool, "GET")) for _ in range(2)]

    async def both_busy() -> bool:
        return len(server.got) == 8

    await eventually(both_busy, timeout=2)
    with pytest.raises(Failure) as late:
        await call(pool, "POST", b"{}", within=0.02)
    assert late.value.kind == "connect_timeout" and not late.value.sent
    for answer in held:
        answer.set_result(ok())
    await asyncio.gather(*blocked)
    assert pool.open == 2


async def test_a_cancelled_call_leaves_no_connection_behind(servers, pools):
    never = asyncio.get_running_loop().create_future()
    server = await servers(lambda got: never if got.connection == 1 else ok())
    pool = pools(server.port, limit=1)
    task = asyncio.create_task(call(pool, "GET"))

    async def arrived() -> bool:
        return bool(server.got)

    await eventually(arrived, timeout=2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (await call(pool, "GET")).status == 200  # the cap of 1 was given back
    assert server.connections == 2


async def test_calls_in_flight_each_end_at_their_own_deadline(servers, pools):
    loop = asyncio.get_running_loop()
    never = loop.create_future()

    def script(got: Got) -> bytes | asyncio.Future[bytes]:
        if got.body != b"slow":
            return never
        later: asyncio.Future[bytes] = loop.create_future()
        loop.call_later(0.4, later.set_result, ok())
        return later

    pool = pools((await servers(script)).port)
    started = loop.time()

    async def timed(body: bytes, within: float) -> tuple[str, float]:
        try:
            await call(pool, "POST", body, within=within)
        except Failure as exc:
            return exc.kind, loop.time() - started
        return "answered", loop.time() - started

    short, long, slow = await asyncio.gather(
        timed(b"a", 0.2), timed(b"b", 0.7), timed(b"slow", 1.5)
    )
    assert short[0] == long[0] == "timeout"
    assert 0.2 <= short[1] < 0.45 and 0.7 <= long[1] < 0.95  # not before, not much after
    assert slow[0] == "answered" and slow[1] < 0.7  # in time: the sweeps left it alone

    async def no_sweep_left() -> bool:  # nothing in flight: no timer keeps the loop busy
        return pool._sweeper is None

    await eventually(no_sweep_left, timeout=1)


async def test_an_answer_followed_by_the_start_of_another_retires_its_connection(servers, pools):
    """Bytes past the answer, in the same segment, are an instance out of step: the
    connection is never reused, so a later request cannot get the stray bytes' answer."""
    stray = ok(b'{"first":true}') + b"HTTP/1.1 200 OK\r\nContent-Len"

    def script(got: Got) -> bytes:
        return stray if got.connection == 1 else ok(b'{"fresh":true}')

    server = await servers(script)
    pool = pools(server.port)
    first = await call(pool, "GET")
    assert first.status == 200 and first.body == b'{"first":true}'
    second = await call(pool, "GET")
    assert second.status == 200 and second.body == b'{"fresh":true}'
    assert [g.connection for g in server.got] == [1, 2]
