"""The entry point: connections read by the gateway itself, and handed to aiohttp whole.

Tests marked ``BOTH_ENGINES`` hold for ``http_engine = "aiohttp"`` too; the rest are the
fast engine's own (its hand-over, read-ahead and lingering).

Every request here goes over a raw socket, so what is checked is the bytes a caller gets:
answers in order on one connection, the hand-over to aiohttp at the first request that is
not the instance API's (or is unusual) with nothing lost or reordered, keep-alive and
close as HTTP/1.0 and 1.1 callers expect them.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass

from aiohttp import web

from gateway.app import GatewayRunner, create_app
from gateway.http.entrypoint import READ_AHEAD, EntryServer
from tests.harness import (
    API_KEY,
    BOTH_ENGINES,
    RunningGateway,
    eventually,
    gateway_settings,
    serve,
)
from tests.support import HEALTHY, reset, stand_in


@dataclass
class Answer:
    status: int
    headers: dict[str, str]  # lowercased names
    body: bytes


class Raw:
    """One connection to the gateway, written and read as bytes."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def to(cls, url: str) -> Raw:
        host, port = url.removeprefix("http://").split(":")
        return cls(*await asyncio.open_connection(host, int(port)))

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def answer(self, head_request: bool = False) -> Answer:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        length = 0 if head_request else int(headers.get("content-length", "0"))
        body = await asyncio.wait_for(self.reader.readexactly(length), 5)
        return Answer(status, headers, body)

    async def closed(self) -> bool:
        """Whether the gateway closed the connection (EOF within 5 s, nothing more sent)."""
        return await asyncio.wait_for(self.reader.read(), 5) == b""

    def close(self) -> None:
        self.writer.close()


STATUS = f"/api/sessions/s1/status?api_key={API_KEY}"
SEND = {"session_id": "s1", "api_key": API_KEY, "recipient_phone": "15550001", "message": "m"}


def get(path: str, *extra: str, version: str = "1.1") -> bytes:
    lines = "".join(f"{line}\r\n" for line in extra)
    return f"GET {path} HTTP/{version}\r\nHost: gw\r\n{lines}\r\n".encode()


def post(path: str, body: dict[str, object], *extra: str) -> bytes:
    data = json.dumps(body).encode()
    lines = "".join(f"{line}\r\n" for line in extra)
    head = f"POST {path} HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n{lines}"
    return f"{head}Content-Length: {len(data)}\r\n\r\n".encode() + data


async def created(gw: RunningGateway, session_id: str) -> None:
    raw = await Raw.to(gw.url)
    raw.send(post("/api/sessions", {"session_id": session_id, "api_key": API_KEY}))
    assert (await raw.answer()).status == 200
    raw.close()


def entries(gw: RunningGateway) -> int:
    """Connections an entry point holds (the ``fast`` engine's; the other has none)."""
    server = gw.runner.server
    return len(server.entries) if isinstance(server, EntryServer) else 0


@BOTH_ENGINES
async def test_answers_come_in_order_and_an_admin_request_hands_the_connection_over(
    simulators, gateways
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token="admin")
    await created(gw, "s1")
    raw = await Raw.to(gw.url)
    # Pipelined: two of the instance API, one of the app's own, one more of the API.
    raw.send(
        get(STATUS)
        + get(f"/api/sessions/nobody/status?api_key={API_KEY}")
        + get("/gateway/distribution", "Authorization: Bearer admin")
        + post("/api/messages/send", SEND)
    )
    first, second, admin, send = [await raw.answer() for _ in range(4)]
    assert first.status == 200 and json.loads(first.body)["session_id"] == "s1"
    assert second.status == 404
    assert admin.status == 200 and json.loads(admin.body)["pinned"] == 1
    assert (
        send.status == 200
        and send.headers["x-whatsapp-instance"] == first.headers["x-whatsapp-instance"]
    )
    assert all(a.headers["x-request-id"] for a in (first, second, admin, send))
    # aiohttp holds the connection now; it goes on serving the instance API on it.
    raw.send(get(STATUS))
    assert (await raw.answer()).status == 200
    assert entries(gw) == 0
    raw.close()


@BOTH_ENGINES
async def test_what_the_entry_point_does_not_read_itself_reaches_aiohttp_intact(
    simulators, gateways
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], max_body_bytes=1024)
    await created(gw, "s1")
    body = json.dumps(SEND).encode()
    chunked = (
        b"POST /api/messages/send HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n" + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)
    )
    continued = (
        b"POST /api/messages/send HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Expect: 100-continue\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    for request in (chunked, get(f"/api/sessions/%73%31/status?api_key={API_KEY}")):
        raw = await Raw.to(gw.url)
        raw.send(request)
        answer = await raw.answer()
        assert answer.status == 200, answer  # by aiohttp's path, as before
        raw.close()
    raw = await Raw.to(gw.url)
    raw.send(continued)
    assert (await raw.answer()).status == 100
    raw.send(body)
    sent = await raw.answer()
    assert sent.status == 200 and json.loads(sent.body)["success"] is True
    raw.close()
    raw = await Raw.to(gw.url)
    raw.send(post("/api/messages/send", {**SEND, "message": "x" * 2000}))
    too_big = await raw.answer()
    assert too_big.status == 413 and json.loads(too_big.body)["success"] is False
    raw.close()


async def test_http_1_0_and_connection_close_are_honoured(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await created(gw, "s1")
    raw = await Raw.to(gw.url)
    raw.send(get(STATUS, version="1.0"))
    answer = await raw.answer()
    assert answer.status == 200 and await raw.closed()

    raw = await Raw.to(gw.url)
    raw.send(get(STATUS, "Connection: keep-alive", version="1.0"))
    answer = await raw.answer()
    assert answer.status == 200 and answer.headers["connection"].lower() == "keep-alive"
    raw.send(get(STATUS, "Connection: keep-alive", version="1.0"))
    assert (await raw.answer()).status == 200
    raw.close()

    raw = await Raw.to(gw.url)
    raw.send(get(STATUS, "Connection: close") + get("/health"))
    answer = await raw.answer()
    assert answer.headers["connection"].lower() == "close"
    assert await raw.closed()  # the request after the last one is not answered


@BOTH_ENGINES
async def test_a_head_answer_has_the_length_and_no_body(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    raw = await Raw.to(gw.url)
    raw.send(b"HEAD /health/live HTTP/1.1\r\nHost: gw\r\n\r\n" + get("/health/live"))
    head = await raw.answer(head_request=True)
    full = await raw.answer()  # read right after: no stray body bytes in between
    assert head.status == full.status == 200
    assert int(head.headers["content-length"]) == len(full.body) > 0
    raw.close()


@BOTH_ENGINES
async def test_headers_pass_both_ways_as_they_came_but_for_hop_by_hop_ones(teardown, gateways):
    async def answer(_: web.Request) -> web.Response:
        headers = {
            "Connection": "X-Private",  # makes X-Private hop-by-hop
            "X-Private": "secret",
            "Keep-Alive": "timeout=5",
            "X-Kept": "caf\u00e9",  # sent as UTF-8 bytes
            "Date": "Mon, 30 Nov 2026 01:02:03 GMT",
            # The gateway's own: replaced, not sent twice.
            "X-Request-ID": "the-instance-s",
            "X-WhatsApp-Instance": "http://elsewhere",
            "X-Gateway-Outcome": "not-sent",  # the gateway's word alone
        }
        return web.Response(body=b'{"success":true}', headers=headers)

    stand = await stand_in(teardown, answer=answer)
    gw = await gateways([stand.url])
    raw = await Raw.to(gw.url)
    caller = (
        "Connection: X-Mine, keep-alive",  # makes X-Mine hop-by-hop
        "X-Mine: secret",
        "Keep-Alive: timeout=9",
        "X-Forwarded-For: 10.0.0.1",
        "X-Forwarded-Host: evil.example",
        "X-Also: kept",
        "X-Request-ID: the-caller-s",
    )
    chunked = get("/info", "Transfer-Encoding: chunked", *caller) + b"0\r\n\r\n"
    # Read by the entry point, then (chunked: aiohttp's) by aiohttp after the hand-over.
    for request in (get("/info", *caller), chunked):
        raw.send(request)
        head = await asyncio.wait_for(raw.reader.readuntil(b"\r\n\r\n"), 5)
        lines = head.split(b"\r\n")[1:-2]
        names = [line.partition(b":")[0].lower() for line in lines]
        assert b"x-kept: caf\xc3\xa9" in [line.lower() for line in lines]
        assert b"x-private" not in names and b"keep-alive" not in names
        assert b"x-gateway-outcome" not in names
        assert b"Date: Mon, 30 Nov 2026 01:02:03 GMT" in lines  # the instance's, once
        for once in (b"date", b"content-length", b"x-whatsapp-instance", b"x-request-id"):
            assert names.count(once) == 1, (once, lines)
        assert f"X-WhatsApp-Instance: {stand.url}".encode() in lines
        assert b"X-Request-ID: the-caller-s" in lines
        length = int(
            next(
                v
                for n, _, v in (x.partition(b":") for x in lines)
                if n.lower() == b"content-length"
            )
        )
        assert await asyncio.wait_for(raw.reader.readexactly(length), 5) == b'{"success":true}'
        seen = {name.lower(): value for name, value in stand.seen[-1].headers.items()}
        assert seen["x-also"] == "kept" and seen["x-forwarded-host"] == "gw"
        assert seen["x-forwarded-for"] == "10.0.0.1, 127.0.0.1"
        assert "x-mine" not in seen and "keep-alive" not in seen
    assert entries(gw) == 0  # the second was aiohttp's
    raw.close()


async def test_a_request_sent_byte_by_byte_and_a_half_closed_caller_are_answered(
    simulators, gateways
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await created(gw, "s1")
    raw = await Raw.to(gw.url)
    for byte in post("/api/messages/send", SEND):
        raw.send(bytes([byte]))
        await raw.writer.drain()
    assert (await raw.answer()).status == 200
    assert entries(gw) == 1  # read by the entry point itself, not handed over
    raw.send(get(STATUS))
    raw.writer.write_eof()
    assert (await raw.answer()).status == 200
    assert await raw.closed()


@BOTH_ENGINES
async def test_idle_connections_are_closed_after_the_keepalive_timeout(
    simulators, redis_prefix, http_engine
):
    sims = await simulators(1)
    settings = gateway_settings([sims[0].url], redis_prefix, http_engine=http_engine)
    runner = GatewayRunner(create_app(settings), access_log=None, keepalive_timeout=0.3)
    await runner.setup()
    try:
        await web.TCPSite(runner, "127.0.0.1", settings.port).start()
        gw = RunningGateway(f"http://127.0.0.1:{settings.port}", runner.app, runner)
        raw = await Raw.to(gw.url)
        raw.send(get("/health"))
        assert (await raw.answer()).status == 200
        assert await raw.closed()  # within the sweep after 0.3 s idle

        async def forgotten() -> bool:
            return entries(gw) == 0

        if http_engine == "fast":
            await eventually(forgotten, timeout=2)
    finally:
        await runner.cleanup()


@BOTH_ENGINES
async def test_a_request_in_flight_is_answered_through_a_shutdown(teardown, gateways):
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        entered.set()
        await release.wait()
        return web.json_response({"success": True, "slow": True})

    stand = await stand_in(teardown, answer=slow)
    gw = await gateways([stand.url])
    raw = await Raw.to(gw.url)
    raw.send(get("/info"))
    await asyncio.wait_for(entered.wait(), 5)
    stopping = asyncio.create_task(gw.runner.cleanup())
    await asyncio.sleep(0.1)  # the shutdown under way, waiting for the answer
    assert not stopping.done()
    release.set()
    answer = await raw.answer()
    assert answer.status == 200 and json.loads(answer.body)["slow"] is True
    await stopping


@BOTH_ENGINES
async def test_requests_queued_behind_one_in_flight_are_dropped_when_the_caller_leaves(
    teardown, gateways
):
    entered, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def slow(request: web.Request) -> web.Response:
        if request.path != "/info":
            return web.json_response({"success": True, "sessions": []})
        calls.append(request.path_qs)
        entered.set()
        await release.wait()
        return web.json_response({"success": True})

    stand = await stand_in(teardown, answer=slow)
    gw = await gateways([stand.url])
    raw = await Raw.to(gw.url)
    raw.send(get("/info") + get("/info?second"))
    await asyncio.wait_for(entered.wait(), 5)
    reset(raw.writer)  # the caller is gone

    async def forgotten() -> bool:
        return entries(gw) == 0

    await eventually(forgotten)
    release.set()
    await asyncio.sleep(0.2)  # time for a second call to be made, were it to be
    assert calls == ["/info"]  # the one in flight finished; the one queued never went out


@BOTH_ENGINES
async def test_what_aiohttp_refuses_is_refused_the_same(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    for request in (
        b"GET /health HTTP/1.1\r\n\r\n",  # no Host
        b"GET /health HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: a\r\nContent-Type: a\r\nContent-Type: b\r\n\r\n",
    ):
        raw = await Raw.to(gw.url)
        raw.send(request)
        answer = await raw.answer()
        assert answer.status == 400, request
        assert json.loads(answer.body)["error"].startswith("bad request")
        raw.close()


@BOTH_ENGINES
async def test_a_fragment_is_neither_a_route_nor_a_field(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    raw = await Raw.to(gw.url)
    raw.send(get("/metrics#x"))
    metrics = await raw.answer()
    assert metrics.status == 200 and b"gateway_requests_total" in metrics.body
    raw.send(get(f"/info?api_key={API_KEY}#&session_id=../../x"))
    assert (await raw.answer()).status == 200  # no session id to check
    raw.close()


async def test_head_answers_log_nothing_and_connections_keep_no_old_bodies(
    simulators, gateways, caplog
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await created(gw, "s1")
    raw = await Raw.to(gw.url)
    raw.send(b"HEAD /health/live HTTP/1.1\r\nHost: gw\r\n\r\n")
    assert (await raw.answer(head_request=True)).status == 200
    raw.send(post("/api/messages/send", {**SEND, "message": "x" * 50_000}))
    assert (await raw.answer()).status == 200
    assert not [r for r in caplog.records if r.levelname == "ERROR"]
    (entry,) = gw.runner.server.entries  # type: ignore[union-attr]
    assert entry._body == [] and entry._headers == []
    raw.close()


@BOTH_ENGINES
async def test_a_caller_that_half_closes_after_a_handed_over_request_is_closed(
    simulators, gateways
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    raw = await Raw.to(gw.url)
    raw.send(get("/health") + get("/metrics"))
    raw.writer.write_eof()
    assert (await raw.answer()).status == 200  # the entry point's own answer
    # Then aiohttp answers /metrics too, and the connection ends.
    rest = await asyncio.wait_for(raw.reader.read(), 5)
    assert rest.startswith(b"HTTP/1.1 200") and b"gateway_requests_total" in rest


async def test_bytes_behind_a_hand_over_wait_in_the_socket_not_in_memory(teardown, gateways):
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        if request.path == "/info":
            entered.set()
            await release.wait()
        return web.json_response({"success": True, "sessions": []})

    stand = await stand_in(teardown, answer=slow)
    gw = await gateways([stand.url], admin_token="admin", max_body_bytes=32 << 20)
    # The handed-over request is the admin API's, with a body it reads: 16 MiB, more than
    # the socket buffers of both ends hold (4 MiB at most for a sender here).
    body = b'{"url": "' + b"x" * ((16 << 20) - 11) + b'"}'
    head = (
        b"PUT /gateway/sessions/s1 HTTP/1.1\r\nHost: gw\r\nAuthorization: Bearer admin\r\n"
        b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    raw = await Raw.to(gw.url)
    raw.send(get("/info") + head)
    await asyncio.wait_for(entered.wait(), 5)
    (entry,) = gw.runner.server.entries  # type: ignore[union-attr]

    async def flood() -> None:
        for start in range(0, len(body), 65536):
            raw.send(body[start : start + 65536])
            await raw.writer.drain()

    flooding = asyncio.create_task(flood())
    await asyncio.sleep(0.5)
    assert not flooding.done()  # the gateway stopped reading: the caller's writes wait
    assert len(entry.buffer) < 1_000_000
    release.set()
    assert (await raw.answer()).status == 200
    await flooding  # aiohttp reads the rest once it has the connection
    moved = await raw.answer()
    assert 400 <= moved.status < 500 and json.loads(moved.body)  # the admin API's own answer
    raw.close()


@BOTH_ENGINES
async def test_the_callers_first_request_id_is_the_one_kept(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    raw = await Raw.to(gw.url)
    raw.send(get("/health", "X-Request-ID: first", "X-Request-ID: second"))
    assert (await raw.answer()).headers["x-request-id"] == "first"
    raw.close()


async def read_the_end(gw: RunningGateway) -> bool:
    """Whether every connection aiohttp holds has read its caller's end (or is gone)."""
    server = gw.runner.server
    assert server is not None
    held = server.connections
    return bool(held) and all(getattr(handler, "_eof", False) for handler in held)


@BOTH_ENGINES
async def test_a_half_closed_caller_gets_every_answer_aiohttp_acts_on(teardown, gateways):
    """A send handed over to aiohttp (chunked), then the caller's end: the send goes out and
    its answer comes back before the close, read by the entry point first or not at all."""
    release = asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        await request.read()
        await release.wait()  # answered only after the caller's end reached the gateway
        return web.json_response({"success": True, "sent": request.path})

    stand = await stand_in(teardown, answer=slow)
    gw = await gateways([stand.url])
    chunked = (
        b"POST /info HTTP/1.1\r\nHost: gw\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
    )
    for opening in (b"", b"GET /health HTTP/1.1\r\nHost: gw\r\n\r\n"):
        release.clear()
        before = len(stand.forwarded())
        raw = await Raw.to(gw.url)
        raw.send(opening + chunked)
        raw.writer.write_eof()
        if opening:
            assert (await raw.answer()).status == 200  # the entry point's own
        await eventually(lambda: read_the_end(gw))
        release.set()
        answer = await raw.answer()
        assert answer.status == 200 and json.loads(answer.body)["sent"] == "/info", opening
        assert await raw.closed()
        assert len(stand.forwarded()) == before + 1


async def test_a_declared_body_over_the_limit_is_refused_from_its_head(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], max_body_bytes=1024)
    head = (
        b"POST /api/messages/send HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
        b"Content-Length: 50000000\r\n\r\n"
    )
    before = len(sims[0].seen)
    for opening in (b"", get("/metrics")):  # read by the entry point, then by aiohttp
        raw = await Raw.to(gw.url)
        raw.send(opening + head + b"x" * 1000)  # the rest of the body is never sent
        if opening:
            assert (await raw.answer()).status == 200
        refused = await raw.answer()
        assert refused.status == 413 and json.loads(refused.body)["success"] is False
        assert refused.headers["connection"].lower() == "close"
        if not opening:
            raw.send(b"x" * 100_000)  # dropped, not read as a request, while it lingers
            assert await raw.closed()  # the end of the answer, at once
        raw.close()
    assert [s.path_qs for s in sims[0].seen[before:]] == ["/health"] * len(sims[0].seen[before:])


async def test_a_connection_reads_ahead_about_one_budget_of_bodies_not_sixteen(teardown, gateways):
    """15 pipelined 3 MB bodies behind a slow request: the gateway holds about READ_AHEAD
    of them (the rest waits in the socket), then answers all 16 in order."""
    entered, release = asyncio.Event(), asyncio.Event()

    async def slow(request: web.Request) -> web.Response:
        body = await request.read()
        if request.method == "GET":
            entered.set()
            await release.wait()
        return web.json_response({"success": True, "size": len(body)})

    async def health(_: web.Request) -> web.Response:
        return web.json_response(HEALTHY)

    app = web.Application(client_max_size=8 << 20)  # takes the bodies whole
    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", slow)
    runner, url = await serve(app)
    teardown.push_async_callback(runner.cleanup)
    gw = await gateways([url], max_body_bytes=4 << 20)
    size = 3 << 20
    post_head = (
        b"POST /info HTTP/1.1\r\nHost: gw\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Length: %d\r\n\r\n" % size
    )
    raw = await Raw.to(gw.url)
    raw.send(get("/info"))
    await asyncio.wait_for(entered.wait(), 5)
    (entry,) = gw.runner.server.entries  # type: ignore[union-attr]

    async def flood() -> None:
        for _ in range(15):
            raw.send(post_head + b"x" * size)
            await raw.writer.drain()

    flooding = asyncio.create_task(flood())
    peak = 0

    async def paused() -> bool:
        nonlocal peak
        peak = max(peak, entry.held_ahead)
        return entry._paused

    await eventually(paused)
    peak = max(peak, entry.held_ahead)
    assert peak <= READ_AHEAD + (256 << 10), peak  # one budget and one read at most
    assert not flooding.done()  # the caller's writes wait in the socket
    release.set()
    answers = [await raw.answer() for _ in range(16)]
    await flooding
    assert [json.loads(a.body)["size"] for a in answers] == [0] + [size] * 15
    raw.close()
