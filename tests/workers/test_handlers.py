"""Built-in handlers against real HTTP servers on loopback ports that answer as the gateway
would: its own 502/503/504 marked ``X-Gateway-Outcome``, an instance's answers unmarked,
resets after the request was written, refused connections."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import socket
import struct
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dev.ports import free_port
from gateway.shared.laravel.jobs import Job, encode, new_payload
from tests.harness import serve
from tests.workers.conftest import Harness, eventually
from workers.handlers import (
    BUILTIN,
    JobContext,
    PermanentError,
    RetryableError,
    UnknownOutcome,
    Verdict,
    retry_after_seconds,
    send_verdict,
)
from workers.retry import UNKNOWN_OUTCOME

SEND = "/api/messages/send"


@dataclass(frozen=True)
class Answer:
    """One scripted answer: a status (the gateway's own when ``outcome`` is set), extra
    headers, a body; or a connection reset once the request has been read; or no answer."""

    status: int = 200
    outcome: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""
    reset: bool = False
    hang: bool = False


RESET = Answer(reset=True)
HANG = Answer(hang=True)


@dataclass
class FakeGateway:
    """Records every POST; answers from ``answers[path]`` in order, the last one repeating."""

    url: str = ""
    requests: list[tuple[str, Any, dict[str, str]]] = field(default_factory=list)
    answers: dict[str, list[Answer]] = field(default_factory=dict)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # ends hanging answers

    def paths(self) -> list[str]:
        return [path for path, _, _ in self.requests]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.path, await request.json(), dict(request.headers)))
        script = self.answers.get(request.path) or [Answer()]
        answer = script.pop(0) if len(script) > 1 else script[0]
        if answer.reset:
            sock = request.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            request.transport.close()
            return web.Response()
        if answer.hang:
            await self.closing.wait()
        headers = dict(answer.headers)
        body: dict[str, Any] = {"success": answer.status < 300}
        if answer.outcome:
            headers["X-Gateway-Outcome"] = answer.outcome
            body.update(error=f"the gateway's own {answer.status}", outcome=answer.outcome)
        if answer.body:
            body["detail"] = answer.body
        return web.json_response(body, status=answer.status, headers=headers)


@pytest.fixture
async def gateway() -> AsyncIterator[FakeGateway]:
    fake = FakeGateway()
    app = web.Application()
    app.router.add_post("/{tail:.*}", fake.handle)
    runner, fake.url = await serve(app)
    yield fake
    fake.closing.set()
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
async def test_whatsapp_jobs_post_their_data_with_the_api_key_and_idempotency_key(
    harness: Harness, gateway: FakeGateway, name: str, path: str
) -> None:
    harness.workers["gateway_url"] = gateway.url
    harness.env["LARAVEL_API_TOKEN"] = "tok"
    data = {"session_id": "s1", "recipient_phone": "+100", "message": "hi"}
    payload = await harness.push("whatsapp-high", name, data)
    async with harness.pool(harness.config(queues=("whatsapp-high",))):
        await eventually(
            lambda: harness.redis.zcard(harness.keys("whatsapp-high").reserved),
            lambda n: n == 0 and len(gateway.requests) == 1,
            what="sent and acked",
        )
    [(got_path, body, headers)] = gateway.requests
    assert (got_path, body) == (path, {**data, "api_key": "tok"})
    assert headers["Idempotency-Key"] == json.loads(payload)["uuid"] + ":1"
    assert await harness.failed() == []


async def test_a_key_in_the_data_is_kept(http: aiohttp.ClientSession, gateway: FakeGateway) -> None:
    job = context(http, gateway.url, "whatsapp.send_message", {"api_key": "own"})
    await BUILTIN["whatsapp.send_message"](job)
    assert gateway.requests[0][1] == {"api_key": "own"}


@pytest.mark.parametrize(
    ("status", "outcome", "verdict"),
    [
        (200, None, Verdict.DONE),
        (201, None, Verdict.DONE),
        (503, "not-sent", Verdict.RETRY),  # the gateway reached no instance
        (502, "not-sent", Verdict.RETRY),
        (504, "not-sent", Verdict.RETRY),
        (504, "unknown", Verdict.UNKNOWN),  # the instance had it and did not answer in time
        (502, "unknown", Verdict.UNKNOWN),  # reset after the request was written
        (503, "unknown", Verdict.UNKNOWN),
        (503, None, Verdict.RETRY),  # an instance that is unavailable did not act
        (408, None, Verdict.RETRY),
        (429, None, Verdict.RETRY),
        (500, None, Verdict.UNKNOWN),  # an instance's own error, maybe after sending
        (502, None, Verdict.UNKNOWN),
        (504, None, Verdict.UNKNOWN),
        (400, None, Verdict.FAIL),
        (401, None, Verdict.FAIL),
        (404, None, Verdict.FAIL),
        (422, None, Verdict.FAIL),
        (400, "unknown", Verdict.UNKNOWN),
    ],
)
def test_send_verdict(status: int, outcome: str | None, verdict: Verdict) -> None:
    assert send_verdict(status, outcome) is verdict


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (Answer(200), None),
        (Answer(400), PermanentError),
        (Answer(503, "not-sent"), RetryableError),
        (Answer(503), RetryableError),
        (Answer(429, headers={"Retry-After": "7"}), RetryableError),
        (Answer(504, "unknown"), UnknownOutcome),
        (Answer(500), UnknownOutcome),
        (RESET, UnknownOutcome),
    ],
)
async def test_a_send_raises_what_its_answer_means(
    http: aiohttp.ClientSession, gateway: FakeGateway, answer: Answer, error: type | None
) -> None:
    gateway.answers[SEND] = [answer]
    job = context(http, gateway.url, "whatsapp.send_message", {"session_id": "s"})
    if error is None:
        await BUILTIN["whatsapp.send_message"](job)
        return
    with pytest.raises(error) as caught:
        await BUILTIN["whatsapp.send_message"](job)
    assert caught.value.retry_after == (7.0 if answer.status == 429 else None)
    assert job.progress.maybe_sent


async def test_a_refused_connection_is_not_sent_and_retried(http: aiohttp.ClientSession) -> None:
    job = context(http, f"http://127.0.0.1:{free_port()}", "whatsapp.send_message", {})
    with pytest.raises(RetryableError, match="could not connect"):
        await BUILTIN["whatsapp.send_message"](job)


def test_retry_after_is_seconds_or_an_http_date() -> None:
    now = time.time()
    assert retry_after_seconds("3", now) == 3.0
    in_a_minute = email.utils.formatdate(now + 60, usegmt=True)
    assert 58 <= (retry_after_seconds(in_a_minute, now) or 0) <= 61
    assert retry_after_seconds(email.utils.formatdate(now - 60, usegmt=True), now) == 0.0
    for bad in (None, "", "soon", "-1", "1.5e9x"):
        assert retry_after_seconds(bad, now) is None


async def test_http_post_sends_body_and_headers(
    http: aiohttp.ClientSession, gateway: FakeGateway
) -> None:
    data = {"url": f"{gateway.url}/hook", "body": {"a": [1]}, "headers": {"X-Sig": "abc"}}
    await BUILTIN["http.post"](context(http, "", "http.post", data))
    [(path, body, headers)] = gateway.requests
    assert (path, body, headers["X-Sig"]) == ("/hook", {"a": [1]}, "abc")
    with pytest.raises(PermanentError, match=r"data\.url"):
        await BUILTIN["http.post"](context(http, "", "http.post", {"body": {}}))
    gateway.answers["/hook"] = [Answer(410)]
    with pytest.raises(PermanentError, match="410"):
        await BUILTIN["http.post"](context(http, "", "http.post", data))
    for answer in (Answer(500), RESET):  # a webhook is delivered at least once
        gateway.answers["/hook"] = [answer]
        job = context(http, "", "http.post", data)
        with pytest.raises(RetryableError):
            await BUILTIN["http.post"](job)
        assert not job.progress.maybe_sent  # so its timeout is retried too


async def test_in_the_pool_400_fails_at_once_and_503_retries(
    harness: Harness, gateway: FakeGateway
) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.answers = {SEND: [Answer(400)], "/api/messages/send-media": [Answer(503)]}
    await harness.push("q", "whatsapp.send_message", {"session_id": "s1"})
    await harness.push("q", "whatsapp.send_media", {"session_id": "s1"})
    async with harness.pool(harness.config(queues=("q",))):
        [entry] = await eventually(harness.failed, what="the 400 job failed")
        delayed = await eventually(
            lambda: harness.redis.zrange(harness.keys("q").delayed, 0, -1), what="503 retried"
        )
    assert "PermanentError" in entry["exception"] and "400" in entry["exception"]
    assert json.loads(entry["payload"])["job"] == "whatsapp.send_message"
    assert json.loads(entry["payload"])["attempts"] == 0  # as popped: first and only try
    [retried] = delayed
    assert json.loads(retried)["job"] == "whatsapp.send_media"
    assert gateway.paths().count(SEND) == 1


@pytest.mark.parametrize(
    "answer", [Answer(504, "unknown"), RESET, Answer(500)], ids=["504", "reset", "instance-500"]
)
async def test_a_send_with_an_unknown_outcome_is_tried_once_then_failed_with_the_reason(
    harness: Harness, gateway: FakeGateway, answer: Answer
) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.answers[SEND] = [answer]
    payload = await harness.push("q", "whatsapp.send_message", {"session_id": "s1"}, backoff=0)
    async with harness.pool(harness.config(queues=("q",))) as pool:
        [entry] = await eventually(harness.failed, what="failed")
        assert pool.metrics.registry.get_sample_value(
            "workers_jobs_total", {"queue": "q", "outcome": "retried"}
        ) in (None, 0.0)
    assert entry["id"] == json.loads(payload)["uuid"]
    assert entry["exception"].endswith(f"({UNKNOWN_OUTCOME})")
    assert "UnknownOutcome" in entry["exception"]
    assert gateway.paths() == [SEND]  # tried exactly once
    keys = harness.keys("q")
    assert await harness.redis.zcard(keys.delayed) == await harness.redis.zcard(keys.reserved) == 0


async def test_a_send_timing_out_in_flight_is_an_unknown_outcome(
    harness: Harness, gateway: FakeGateway
) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.answers[SEND] = [HANG]
    await harness.push("q", "whatsapp.send_message", {"session_id": "s1"}, timeout=0.3)
    async with harness.pool(harness.config(queues=("q",))):
        [entry] = await eventually(harness.failed, what="failed")
    assert "timed out after 0.3 s with its request in flight" in entry["exception"]
    assert entry["exception"].endswith(f"({UNKNOWN_OUTCOME})")
    assert gateway.paths() == [SEND]


async def test_a_send_answered_503_not_sent_is_retried_with_the_same_key_and_succeeds(
    harness: Harness, gateway: FakeGateway
) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.answers[SEND] = [Answer(503, "not-sent"), Answer(200)]
    payload = await harness.push("q", "whatsapp.send_message", {"session_id": "s1"}, backoff=0)
    async with harness.pool(harness.config(queues=("q",))):
        await eventually(lambda: len(gateway.requests) == 2, what="the second try")
        await eventually(lambda: harness.redis.zcard(harness.keys("q").reserved), _zero, what="ack")
    keys = {headers["Idempotency-Key"] for _, _, headers in gateway.requests}
    assert keys == {json.loads(payload)["uuid"] + ":1"}
    assert await harness.failed() == []


def _zero(n: int) -> bool:
    return n == 0


async def test_unknown_outcomes_are_retried_when_the_job_or_its_queue_asks(
    harness: Harness, gateway: FakeGateway
) -> None:
    harness.workers["gateway_url"] = gateway.url
    harness.workers["retry_unknown_queues"] = ["lenient"]
    gateway.answers[SEND] = [Answer(504, "unknown"), Answer(200)]
    gateway.answers["/api/messages/send-media"] = [Answer(504, "unknown"), Answer(200)]
    await harness.push("q", "whatsapp.send_message", {"n": 1}, backoff=0, retryUnknown=True)
    await harness.push("lenient", "whatsapp.send_media", {"n": 2}, backoff=0)
    config = harness.config(queues=("q", "lenient"), concurrency=1)
    async with harness.pool(config):
        await eventually(lambda: len(gateway.requests) == 4, what="both retried")
        await eventually(
            lambda: harness.redis.zcard(harness.keys("lenient").reserved), _zero, what="ack"
        )
    assert sorted(body["n"] for _, body, _ in gateway.requests) == [1, 1, 2, 2]
    assert await harness.failed() == []


async def test_429_waits_the_retry_after_it_names(harness: Harness, gateway: FakeGateway) -> None:
    harness.workers["gateway_url"] = gateway.url
    gateway.answers[SEND] = [Answer(429, headers={"Retry-After": "1"}), Answer(200)]
    await harness.push("q", "whatsapp.send_message", {"session_id": "s1"}, backoff="30")
    async with harness.pool(harness.config(queues=("q",))):
        [(_, due)] = await eventually(
            lambda: harness.redis.zrange(harness.keys("q").delayed, 0, -1, withscores=True),
            what="released",
        )
        assert 0.5 < due - time.time() <= 1.05  # not the 30 s backoff
        await eventually(lambda: len(gateway.requests) == 2, what="the second try")


async def test_info_logs_carry_no_answer_body_query_string_or_phone_number(
    harness: Harness, gateway: FakeGateway, caplog: pytest.LogCaptureFixture
) -> None:
    harness.workers["gateway_url"] = gateway.url
    phone, text = "6281234567890", "your code is 4321"
    gateway.answers[SEND] = [Answer(503, body=f"cannot send {text!r} to {phone}")]
    gateway.answers["/hook"] = [Answer(500, body=f"hook failed for {phone}")]
    gateway.answers["/api/messages/send-media"] = [Answer(504, "unknown", body=phone)]
    data = {"session_id": "s1", "recipient_phone": phone, "message": text}
    await harness.push("q", "whatsapp.send_message", data, maxTries=2, backoff=0)
    await harness.push("q", "whatsapp.send_media", data)
    hook = {"url": f"{gateway.url}/hook?token=secret-token&to={phone}", "body": data}
    await harness.push("q", "http.post", hook, maxTries=1)
    caplog.set_level(logging.INFO, logger="workers")
    async with harness.pool(harness.config(queues=("q",))):
        await eventually(harness.failed, lambda e: len(e) == 3, what="three failures")
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    assert any("answered 503" in line for line in lines), lines
    assert any("/hook answered 500" in line for line in lines), lines
    for line in lines:
        for secret in (phone, "4321", "secret-token", "?", "cannot send"):
            assert secret not in line, line
    assert all(phone in e["exception"] for e in await harness.failed())  # kept for the record
