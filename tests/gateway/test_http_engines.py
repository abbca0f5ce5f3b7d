"""Both HTTP engines, fed the same hostile bytes, give the same answer.

``http_engine = "fast"`` reads the instance API's plain requests with llhttp itself and hands
the rest to aiohttp; ``"aiohttp"`` lets aiohttp's server read everything. Two parsers that
disagree about where a request ends are how requests are smuggled, so each request below
(bad framing, smuggling shapes, odd heads) goes to one gateway of each engine, on a fresh
connection, and the answers must match: the status, the error said, and whether anything
reached an instance.
"""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.harness import API_KEY

STATUS = f"/api/sessions/s1/status?api_key={API_KEY}".encode()
BODY = json.dumps({"session_id": "s1", "api_key": API_KEY, "to": "1", "message": "m"}).encode()


def head(*lines: bytes, target: bytes = STATUS, method: bytes = b"GET") -> bytes:
    return method + b" " + target + b" HTTP/1.1\r\n" + b"".join(x + b"\r\n" for x in lines)


def post(*lines: bytes, body: bytes = BODY) -> bytes:
    return head(b"Host: gw", *lines, target=b"/api/messages/send", method=b"POST") + b"\r\n" + body


CL = b"Content-Length: %d" % len(BODY)
HOSTILE: dict[str, bytes] = {
    "plain GET": head(b"Host: gw") + b"\r\n",
    "plain POST": post(CL, b"Content-Type: application/json"),
    "CL and TE": post(CL, b"Transfer-Encoding: chunked"),
    "TE and CL": post(b"Transfer-Encoding: chunked", CL),
    "two different CLs": post(CL, b"Content-Length: 3"),
    "two equal CLs": post(CL, CL),
    "CL with a sign": post(b"Content-Length: +%d" % len(BODY)),
    "negative CL": post(b"Content-Length: -1"),
    "CL not a number": post(b"Content-Length: 12abc"),
    "CL list": post(b"Content-Length: %d, %d" % (len(BODY), len(BODY))),
    "TE xchunked": post(b"Transfer-Encoding: xchunked"),
    "TE chunked, identity": post(b"Transfer-Encoding: chunked, identity"),
    "TE with a tab": post(b"Transfer-Encoding:\tchunked"),
    "TE obs-folded": post(b"Transfer-Encoding:", b" chunked"),
    "bad chunk size": post(b"Transfer-Encoding: chunked", body=b"zz\r\nabc\r\n0\r\n\r\n"),
    "chunk size with junk": post(b"Transfer-Encoding: chunked", body=b"3;\x00\r\nabc\r\n0\r\n\r\n"),
    "space before colon": head(b"Host: gw", b"Content-Length : 0") + b"\r\n",
    "header without colon": head(b"Host: gw", b"NoColonHere") + b"\r\n",
    "NUL in a header": head(b"Host: gw", b"X-A: a\x00b") + b"\r\n",
    "CR alone in a header": head(b"Host: gw", b"X-A: a\rb") + b"\r\n",
    "obs-fold": head(b"Host: gw", b"X-A: a", b" b") + b"\r\n",
    "two Hosts": head(b"Host: gw", b"Host: other") + b"\r\n",
    "no Host": head() + b"\r\n",
    "lowercase method": head(b"Host: gw", method=b"get") + b"\r\n",
    "unknown method": head(b"Host: gw", method=b"BREW") + b"\r\n",
    "absolute-form target": head(b"Host: gw", target=b"http://evil" + STATUS) + b"\r\n",
    "asterisk target": head(b"Host: gw", target=b"*", method=b"OPTIONS") + b"\r\n",
    "NUL in the path": head(b"Host: gw", target=b"/api/sessions/s\x001/status") + b"\r\n",
    "space in the path": head(b"Host: gw", target=b"/api/sessions/s 1/status") + b"\r\n",
    "dot segments": head(b"Host: gw", target=b"/api/sessions/../metrics") + b"\r\n",
    "encoded slash": head(b"Host: gw", target=b"/api/sessions/a%2Fb/status") + b"\r\n",
    "bad percent": head(b"Host: gw", target=b"/api/sessions/%zz/status") + b"\r\n",
    "non-ASCII path": head(b"Host: gw", target="/api/sessions/é/status".encode()) + b"\r\n",
    "HTTP/2.0 line": b"GET " + STATUS + b" HTTP/2.0\r\nHost: gw\r\n\r\n",
    "HTTP/0.9 line": b"GET " + STATUS + b"\r\n\r\n",
    "version junk": b"GET " + STATUS + b" HTTP/1.x\r\nHost: gw\r\n\r\n",
    "long header": head(b"Host: gw", b"X-Long: " + b"a" * 9000) + b"\r\n",
    "many headers": head(b"Host: gw", *(b"X-%d: v" % n for n in range(200))) + b"\r\n",
    "leading empty line": b"\r\n" + head(b"Host: gw") + b"\r\n",
    "gzip body that is not gzip": post(CL, b"Content-Encoding: gzip"),
    "JSON gzip body that is not gzip": post(
        CL, b"Content-Encoding: gzip", b"Content-Type: application/json"
    ),
    "unknown coding": post(CL, b"Content-Encoding: br", b"Content-Type: application/json"),
}


async def exchange(url: str, data: bytes) -> tuple[int | None, str | None, bool]:
    """Send ``data`` on a fresh connection: the first answer's status, its JSON error (if
    any), and whether the gateway closed the connection after it."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        try:
            raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        except (asyncio.IncompleteReadError, ConnectionError):
            return None, None, True
        lines = raw_head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])
        }
        body = await asyncio.wait_for(
            reader.readexactly(int(headers.get("content-length", "0"))), 5
        )
        error = None
        if status >= 400 and headers.get("content-type", "").startswith("application/json"):
            error = json.loads(body).get("error")
        try:
            rest = await asyncio.wait_for(reader.read(1), 0.5)
            closed = rest == b""
        except TimeoutError:
            closed = False
        except ConnectionError:
            closed = True
        return status, error, closed
    finally:
        writer.close()


@pytest.fixture
async def two_engines(simulators, gateways, http):
    sims = await simulators(1)
    fast = await gateways([sims[0].url], http_engine="fast", max_body_bytes=1 << 20)
    plain = await gateways([sims[0].url], http_engine="aiohttp", max_body_bytes=1 << 20)
    async with http.post(
        f"{fast.url}/api/sessions", json={"session_id": "s1", "api_key": API_KEY}
    ) as r:
        assert r.status in (200, 201), await r.text()
    return sims[0], fast, plain


@pytest.mark.parametrize("name", list(HOSTILE))
async def test_both_engines_answer_the_same(two_engines, name):
    sim, fast, plain = two_engines
    data = HOSTILE[name]
    before = len(sim.seen)
    by_fast = await exchange(fast.url, data)
    reached_from_fast = len(sim.seen) - before
    before = len(sim.seen)
    by_aiohttp = await exchange(plain.url, data)
    reached_from_aiohttp = len(sim.seen) - before
    assert by_fast[:2] == by_aiohttp[:2], (name, by_fast, by_aiohttp)
    assert reached_from_fast == reached_from_aiohttp, name
    assert by_fast[0] is None or by_fast[0] < 500, (name, by_fast)
