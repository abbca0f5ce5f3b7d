"""Hostile request lines and fields: only what the gateway parsed itself reaches an instance."""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import zlib
from typing import Any

from aiohttp import web

from dev.ports import free_port
from tests.harness import API_KEY, BOTH_ENGINES, Seen, recording
from tests.support import ADMIN_TOKEN, HEALTHY, ok, pin, raw_http, stand_in

pytestmark = BOTH_ENGINES  # the same behaviour from both engines


async def test_absolute_and_authority_form_targets_are_refused(simulators, gateways, teardown):
    """No request line can make the gateway reach a host of the caller's choosing."""
    internal = await stand_in(teardown)  # a service the gateway can reach and callers must not
    host = internal.url.removeprefix("http://")
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    before = len(sims[0].seen)
    for method, target in [
        ("GET", f"{internal.url}/secret"),
        ("GET", f"http://{host}"),
        ("POST", f"{internal.url}/api/messages/send"),
        ("GET", f"//{host}/secret"),
        ("GET", f"//{host}/api/sessions/x/status"),
        ("CONNECT", host),
        ("OPTIONS", "*"),
    ]:
        reply = await raw_http(gw.url, target, method=method)
        assert reply.status == 400, (method, target, reply)
        assert reply.json()["success"] is False, (method, target)
    # what aiohttp's own parser refuses never reaches the gateway's code at all
    assert (await raw_http(gw.url, "secret")).status == 400
    assert internal.seen == []
    assert len(sims[0].seen) == before


async def test_the_path_routed_is_the_path_forwarded(simulators, gateways, http):
    """Dot segments, doubled slashes and encoded letters are resolved once, before routing."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    for sid, sim in (("a", sims[0]), ("b", sims[1])):
        async with http.post(
            f"{gw.url}/api/sessions", json={"session_id": sid, "api_key": API_KEY}
        ) as r:
            assert r.headers["X-WhatsApp-Instance"] == sim.url
    for target in [
        "/api/sessions/a/../b/status",
        "/api/sessions/a/./../b/status",
        "/api/sessions/./b/status",
        "/api//sessions/b/status",
        "/api/x/../sessions/b//status",
        "/api/sessions/%62/status",
    ]:
        reply = await raw_http(gw.url, f"{target}?api_key={API_KEY}")
        assert reply.status == 200, (target, reply)
        assert reply.headers["X-WhatsApp-Instance"] == sims[1].url, target
        assert reply.json()["session_id"] == "b", target
        assert sims[1].seen[-1].path_qs == f"/api/sessions/b/status?api_key={API_KEY}", target
    # paths that read two ways, and session id segments that are not one session id
    before = [len(s.seen) for s in sims]
    for target in [
        "/api/sessions/a%2Fb/status",
        "/api/sessions/a%2fb",
        "/api/messages/a%2Fb/validate",
        "/api/sessions/%2e%2e/status",
        "/api/sessions/%2E/status",
        "/api/sessions/%2e/b/status",
        "/api/sessions/a%00b/status",
        "/api/sessions/%FF%FE/status",
        "/api/sessions/%/status",
    ]:
        reply = await raw_http(gw.url, f"{target}?api_key={API_KEY}")
        assert reply.status == 400, (target, reply)
        assert reply.json()["success"] is False, target
    assert (await raw_http(gw.url, "/api/sessions/\xc3\xa9/status")).status == 400  # raw UTF-8
    assert [len(s.seen) for s in sims] == before


ODD_WORKSPACE_IDS: list[Any] = [
    "²",
    "٣",
    "--5",
    "-5",
    "+5",
    " 5",
    "5 ",
    "5.0",
    "0x10",
    "1e3",
    "5" * 21,
    "5" * 5000,
    -5,
    10**21,
    5.5,
    True,
    [],
    {},
    ["5"],
]
ODD_SESSION_IDS: list[Any] = [
    ".",
    "..",
    "a/b",
    "../x",
    "x" * 129,
    "é",
    "a b",
    "a\x00b",
    "a\nb",
    True,
    1.5,
    [],
    {"id": "a"},
]


async def test_odd_values_of_every_field_get_a_json_4xx(simulators, gateways, http):
    """A table of hostile values, in body and query: a 4xx JSON answer, nothing forwarded."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    before = [len(s.seen) for s in sims]
    calls: list[tuple[str, str, dict[str, str], bytes | None]] = []
    for value in ODD_WORKSPACE_IDS:
        create = {"session_id": "odd-1", "workspace_id": value, "api_key": API_KEY}
        calls.append(("POST", "/api/sessions", {}, json.dumps(create).encode()))
        calls.append(("POST", "/info", {}, json.dumps({"workspace_id": value}).encode()))
        if isinstance(value, str):
            calls.append(("GET", "/info", {"workspace_id": value}, None))
    for value in ODD_SESSION_IDS:
        send = {"session_id": value, "api_key": API_KEY, "recipient_phone": "1", "message": "m"}
        calls.append(("POST", "/api/messages/send", {}, json.dumps(send).encode()))
        calls.append(("POST", "/api/sessions", {}, json.dumps({"session_id": value}).encode()))
        if isinstance(value, str):
            calls.append(("GET", "/api/messages/send", {"session_id": value}, None))
    for body in [b"[" * 100_000, b'{"a":' * 50_000, b"\xff\xfe{}", b'{"session_id": "\xc3"}']:
        calls.append(("POST", "/api/messages/send", {}, body))
    for method, path, params, body in calls:
        headers = {"Content-Type": "application/json"}
        async with http.request(
            method, f"{gw.url}{path}", params=params, data=body, headers=headers
        ) as r:
            text = await r.text()
            assert 400 <= r.status < 500, (method, path[:80], r.status, text[:200])
            answer = json.loads(text)
            assert answer["success"] is False, (path[:80], text[:200])
            assert isinstance(answer["error"], str), path[:80]
    assert [len(s.seen) for s in sims] == before
    # the boundaries that are fine
    for value in ("0", "12345678901234567890", 7):
        body = {"session_id": f"ok-{value}", "workspace_id": value, "api_key": API_KEY}
        async with http.post(f"{gw.url}/api/sessions", json=body) as r:
            assert r.status == 200, await r.text()


async def test_binary_and_multipart_bodies_pass_untouched(gateways, http, teardown):
    """Only JSON bodies are read for routing; anything else goes through byte for byte."""
    instance = await stand_in(teardown)
    gw = await gateways([instance.url], admin_token=ADMIN_TOKEN)
    await pin(http, gw.url, "bin-1", instance.url)
    blob = bytes(range(256)) * 4
    headers = {"Content-Type": "application/octet-stream"}
    async with http.put(f"{gw.url}/api/sessions/bin-1/metadata", data=blob, headers=headers) as r:
        assert r.status == 200, await r.text()
    seen = instance.forwarded()[-1]
    assert seen.body == blob and seen.headers["Content-Type"] == "application/octet-stream"

    form = b'--XyZ\r\nContent-Disposition: form-data; name="file"\r\n\r\n\x00\xff{\r\n--XyZ--\r\n'
    headers = {"Content-Type": "multipart/form-data; boundary=XyZ"}
    async with http.post(
        f"{gw.url}/api/messages/send-media?session_id=bin-1", data=form, headers=headers
    ) as r:
        assert r.status == 200, await r.text()
    seen = instance.forwarded()[-1]
    assert seen.body == form and seen.path_qs == "/api/messages/send-media?session_id=bin-1"


async def test_head_answers_keep_their_content_length(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    path = "/health/live"  # a body of fixed length
    direct = await raw_http(sims[0].url, path, method="HEAD")
    through = await raw_http(gw.url, path, method="HEAD")
    assert direct.status == through.status == 200
    assert int(direct.headers["Content-Length"]) > 0
    assert through.headers["Content-Length"] == direct.headers["Content-Length"]
    assert through.body == b""


async def _send_raw(url: str, data: bytes) -> tuple[bytes, bytes]:
    """Send bytes as they are; the status line and the body of the answer."""
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(data)
    try:
        answer = await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    return head, body


async def test_what_aiohttp_cannot_parse_gets_a_json_400_and_no_traceback(
    simulators, gateways, caplog
):
    """A flood of unparsable requests costs at most a short DEBUG line each, never a traceback."""
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    caplog.set_level(logging.DEBUG)
    host = b"Host: x\r\n"
    for raw in [
        b"GET secret HTTP/1.1\r\n" + host + b"\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /\xff\xfe HTTP/1.1\r\n" + host + b"\r\n",
        b"GET /health HTTP/1.1\r\n" + host + b"X-Long: " + b"a" * 20_000 + b"\r\n\r\n",
        b"POST /api/sessions HTTP/1.1\r\n" + host + b"Content-Length: 1x\r\n\r\n{}",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03secret-key\r\n\r\n",  # TLS on a plain port
    ]:
        head, body = await _send_raw(gw.url, raw)
        status_line, _, headers = head.partition(b"\r\n")
        assert status_line.split()[1] == b"400", (raw[:40], head)
        assert b"application/json" in headers, (raw[:40], head)
        answer = json.loads(body)
        assert answer["success"] is False and answer["error"].startswith("bad request"), answer
    assert "Traceback" not in caplog.text
    lines = [r for r in caplog.records if r.name.startswith(("aiohttp", "gateway.http"))]
    assert len(lines) == 6 and all(r.levelno == logging.DEBUG for r in lines), lines
    assert all(r.exc_info is None for r in lines)
    assert b"secret" not in caplog.text.encode() and "xff" not in caplog.text


async def _recording_instance(teardown) -> tuple[str, list[Seen]]:
    """An instance that records bodies as they came (its server decodes nothing)."""
    seen: list[Seen] = []
    app = web.Application(middlewares=[recording(seen)])

    async def health(_: web.Request) -> web.Response:
        return web.json_response(HEALTHY)

    app.router.add_get("/health", health)
    app.router.add_route("*", "/{tail:.*}", ok)
    runner = web.AppRunner(app, access_log=None, auto_decompress=False)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    teardown.push_async_callback(runner.cleanup)
    return f"http://127.0.0.1:{port}", seen


async def test_a_compressed_body_is_routed_by_a_decoded_copy_and_forwarded_as_it_came(
    gateways, http, teardown
):
    (first, _), (second, seen) = [await _recording_instance(teardown) for _ in range(2)]
    gw = await gateways([first, second], admin_token=ADMIN_TOKEN, max_body_bytes=4096)
    await pin(http, gw.url, "gz-1", second)
    send = {"session_id": "gz-1", "api_key": API_KEY, "recipient_phone": "1", "message": "m"}
    packed = gzip.compress(json.dumps(send).encode())
    head = "POST /api/messages/send HTTP/1.1\r\nHost: gw\r\nContent-Type: application/json\r\n"
    head += "Content-Encoding: gzip\r\nConnection: close\r\n"
    chunked = b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(packed), packed)
    # read by the entry point, then by aiohttp (chunked)
    for rest in (b"Content-Length: %d\r\n\r\n%s" % (len(packed), packed), chunked):
        status_line, _ = await _send_raw(gw.url, head.encode() + rest)
        assert status_line.split()[1] == b"200", status_line
        forwarded = seen[-1]
        assert forwarded.path_qs == "/api/messages/send"  # routed by the copy's session id
        assert forwarded.body == packed and forwarded.headers["Content-Encoding"] == "gzip"
    # what cannot be read is refused, and nothing is sent
    before = len(seen)
    bomb = gzip.compress(json.dumps({**send, "message": "x" * 10_000}).encode())
    for coding, body, status in [
        ("gzip", bomb, 413),
        ("gzip", packed[:-4], 400),
        ("gzip", b"not gzip", 400),
        ("br", packed, 415),
    ]:
        headers = {"Content-Type": "application/json", "Content-Encoding": coding}
        reply = await raw_http(gw.url, "/api/messages/send", "POST", headers, body)
        assert reply.status == status and reply.json()["success"] is False, (coding, reply)
    assert len(seen) == before
    # a deflate body, zlib-wrapped or raw, and a binary one that is never read
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for body in (
        zlib.compress(json.dumps(send).encode()),
        raw_deflate.compress(json.dumps(send).encode()) + raw_deflate.flush(),
    ):
        headers = {"Content-Type": "application/json", "Content-Encoding": "deflate"}
        reply = await raw_http(gw.url, "/api/messages/send", "POST", headers, body)
        assert reply.status == 200 and seen[-1].body == body
    headers = {"Content-Type": "application/octet-stream", "Content-Encoding": "br"}
    reply = await raw_http(gw.url, "/api/sessions/gz-1/metadata", "PUT", headers, b"\x00\xff")
    assert reply.status == 200 and seen[-1].body == b"\x00\xff"


async def test_bare_lf_line_ends_get_a_400_at_once_from_both_parsers(
    simulators, gateways, http_engine
):
    """llhttp refuses a line ended by LF alone, and so does aiohttp; the entry point hands
    such a head over at once instead of waiting for a CRLF CRLF that never comes. (aiohttp
    alone refuses the whole of what it read at once: a request before the bad one in the
    same read gets no answer of its own, only the 400.)"""
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    before = len(sims[0].seen)
    plain = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    for raw in [
        b"GET /health HTTP/1.1\nHost: x\n\n",
        b"GET /health HTTP/1.1\r\nHost: x\n\r\n",
        b"GET /health HTTP/1.1\r\nHost: x\r\n\n",
        b"GET /health HTTP/1.1\nHost: x\r\n\r\n",
        b"POST /api/messages/send HTTP/1.1\nHost: x\nContent-Length: 2\n\n{}",
    ]:
        for opening in (b"", plain):  # alone, and behind one the entry point answers
            head, body = await _send_raw(gw.url, opening + raw)  # fails on a 5 s wait
            if opening and (http_engine == "fast" or head.startswith(b"HTTP/1.1 200")):
                assert head.startswith(b"HTTP/1.1 200"), head
                head, _, body = body.partition(b"HTTP/1.")[2].partition(b"\r\n\r\n")
                head = b"HTTP/1." + head
            assert head.split()[1] == b"400", (raw, head)
            assert json.loads(body)["error"].startswith("bad request"), body
    assert [s.path_qs for s in sims[0].seen[before:]] == ["/health"] * len(sims[0].seen[before:])


async def test_an_api_key_that_is_not_a_string_is_no_key(simulators, gateways, http, caplog):
    """The gateway searches for a session with the caller's key; an object there is none."""
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    for key in ({"a": 1}, ["k"], 5, True):
        for path in ("/api/sessions/x/restore", "/api/sessions/x/reconnect"):
            async with http.post(f"{gw.url}{path}", json={"api_key": key}) as r:
                assert 400 <= r.status < 500, (key, path, r.status, await r.text())
            params = {"api_key": API_KEY}
            async with http.post(f"{gw.url}{path}", params=params, json={"api_key": key}) as r:
                assert 400 <= r.status < 500, (key, path, r.status, await r.text())
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
