"""Built-in handlers against a real HTTP server on a loopback port."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve
from tests.workers.conftest import Harness, eventually, free_port
from workers.handlers import BUILTIN, JobContext, PermanentError, RetryableError
from workers.jobs import Job, encode, new_payload


@dataclass
class FakeGateway:
    """Records every POST; answers ``status[path]`` (200 by default)."""

    url: str = ""
    requests: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, await request.json(), dict(request.headers)))
        code = self.status.get(request.path, 200)
        return web.json_response({"success": code < 300}, status=code)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner, fake.url = await serve(app)
    yield fake
    await runner.cleanup()


def context(http: aiohttp.ClientSession, gateway_url: str, name: str, data: dict) -> JobContext:
    job = Job.reserved("q", encode(new_payload(name, data, attempts=1)), counted=True)
    return JobContext(job, http, None, gateway_url, "secret")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("whatsapp.send_message", "/api/messages/send"),
        ("whatsapp.send_media", "/api/messages/send-media"),
        ("whatsapp.bulk_send", "/api/messages/bulk-send"),
    ],
)
async def test_whatsapp_jobs_post_their_data_with_the_api_key(
    harness: Harness, gateway: FakeGateway, name: str, path: str
) -> None:
    harness.workers["gateway_url"] = gateway.url
    harness.env["LARAVEL_API_TOKEN"] = "tok"
    data = {"session_id": "s1", "recipient_phone": "+100", "message": "hi"}
    await harness.push("whatsapp-high", name, data)
    async with harness.pool(harness.config(queues=("whatsapp-high",))):
        await eventually(
            lambda: harness.redis.zcard(harness.keys("whatsapp-high").reserved),
            lambda n: n == 0 and len(gateway.requests) == 1,
            what="sent and acked",
        )
    [(got_path, body, _)] = gateway.requests
    assert (got_path, body) == (path, {**data, "api_key": "tok"})
    assert await harness.failed() == []


async def test_a_key_in_the_data_is_kept(http: aiohttp.ClientSession, gateway: FakeGateway) -> None:
    job = context(http, gateway.url, "whatsapp.send_message", {"api_key": "own"})
    await BUILTIN["whatsapp.send_message"](job)
    assert gateway.requests[0][1] == {"api_key": "own"}


@pytest.mark.parametrize(
    ("status", "error"),
    [
        (200, None),
        (201, None),
        (400, PermanentError),
        (401, PermanentError),
        (404, PermanentError),
        (422, PermanentError),
        (408, RetryableError),
        (429, RetryableError),
        (500, RetryableError),
        (503, RetryableError),
    ],
)
async def test_status_decides_done_fail_or_retry(
    http: aiohttp.ClientSession, gateway: FakeGateway, status: int, error: type | None
) -> None:
    gateway.status["/api/messages/send"] = status
    job = context(http, gateway.url, "whatsapp.send_message", {"session_id": "s"})
    if error is None:
        await BUILTIN["whatsapp.send_message"](job)
    else:
        with pytest.raises(error, match=str(status)):
            await BUILTIN["whatsapp.send_message"](job)


async def test_connection_refused_raises_a_client_error(http: aiohttp.ClientSession) -> None:
    job = context(http, f"http://127.0.0.1:{free_port()}", "whatsapp.send_message", {})
    with pytest.raises(aiohttp.ClientConnectionError):
        await BUILTIN["whatsapp.send_message"](job)


async def test_http_post_sends_body_and_headers(
    http: aiohttp.ClientSession, gateway: FakeGateway
) -> None:
    data = {"url": f"{gateway.url}/hook", "body": {"a": [1]}, "headers": {"X-Sig": "abc"}}
    await BUILTIN["http.post"](context(http, "", "http.post", data))
    [(path, body, headers)] = gateway.requests
    assert (path, body, headers["X-Sig"]) == ("/hook", {"a": [1]}, "abc")
    with pytest.raises(PermanentError, match=r"data\.url"):
        await BUILTIN["http.post"](context(http, "", "http.post", {"body": {}}))
    gateway.status["/hook"] = 410
    with pytest.raises(PermanentError, match="410"):
        await BUILTIN["http.post"](context(http, "", "http.post", data))


async def test_in_the_pool_400_fails_at_once_and_503_retries(
    harness: Harness, gateway: FakeGateway
) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.status = {"/api/messages/send": 400, "/api/messages/send-media": 503}
    await harness.push("q", "whatsapp.send_message", {"session_id": "s1"})
    await harness.push("q", "whatsapp.send_media", {"session_id": "s1"})
    async with harness.pool(harness.config(queues=("q",))):
        [entry] = await eventually(harness.failed, what="the 400 job failed")
        delayed = await eventually(
            lambda: harness.redis.zrange(harness.keys("q").delayed, 0, -1), what="503 retried"
        )
    assert "PermanentError" in entry["exception"] and "400" in entry["exception"]
    assert json.loads(entry["payload"])["job"] == "whatsapp.send_message"
    assert json.loads(entry["payload"])["attempts"] == 1  # no retry despite tries = 3
    [retried] = delayed
    assert json.loads(retried)["job"] == "whatsapp.send_media"
    assert [p for p, _, _ in gateway.requests].count("/api/messages/send") == 1
