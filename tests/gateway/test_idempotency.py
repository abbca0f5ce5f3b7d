"""``Idempotency-Key``: a keyed send reaches an instance at most once, whatever repeats it."""

from __future__ import annotations

import asyncio
import json
import signal
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from dev.ports import free_port
from gateway.decisions.idempotency import (
    Held,
    Repeat,
    Settle,
    State,
    fingerprint,
    parse_key,
    repeat,
    scope,
    settle,
)
from tests.harness import API_KEY, eventually, sample, serve, wait_healthy
from tests.spawned import Spawned, gateway_env

SEND = "/api/messages/send"


def message(sid: str = "s-1", text: str = "hi") -> dict[str, Any]:
    return {"session_id": sid, "api_key": API_KEY, "recipient_phone": "62811", "message": text}


async def post(
    http: aiohttp.ClientSession,
    url: str,
    key: str | None,
    body: dict[str, Any] | bytes,
    path: str = SEND,
) -> tuple[int, dict[str, str], Any]:
    headers = {"Idempotency-Key": key} if key is not None else {}
    kwargs: dict[str, Any] = {"data": body} if isinstance(body, bytes) else {"json": body}
    if isinstance(body, bytes):
        headers["Content-Type"] = "application/json"
    async with http.post(f"{url}{path}", headers=headers, **kwargs) as resp:
        return resp.status, dict(resp.headers), await resp.json(content_type=None)


async def create(http: aiohttp.ClientSession, url: str, sid: str = "s-1") -> str:
    async with http.post(
        f"{url}/api/sessions", json={"session_id": sid, "api_key": API_KEY}
    ) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-WhatsApp-Instance"]


async def test_a_repeat_gets_the_kept_answer_and_never_reaches_the_instance(
    simulators, gateways, http
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    owner = await create(http, gw.url)
    holder = next(s for s in sims if s.url == owner)

    status, headers, first = await post(http, gw.url, "job-1:1", message())
    assert status == 200 and first["success"] is True
    assert "Idempotent-Replayed" not in headers
    # the same request, spelled another way (key order, spacing), is the same request
    respelled = json.dumps(dict(reversed(list(message().items()))), indent=2).encode()
    for body in (message(), respelled):
        status, headers, again = await post(http, gw.url, "job-1:1", body)
        assert status == 200 and again == first  # the same message id: one message
        assert headers["Idempotent-Replayed"] == "true"
        assert headers["X-WhatsApp-Instance"] == owner
    assert len(holder.calls(SEND)) == 1
    assert holder.sessions["s-1"].messages_sent == 1
    # another key is another message
    status, headers, other = await post(http, gw.url, "job-2:1", message())
    assert status == 200 and other["message_id"] != first["message_id"]
    assert len(holder.calls(SEND)) == 2
    assert sample(gw, "gateway_idempotency_total", result="replayed") == 2
    assert sample(gw, "gateway_idempotency_total", result="forwarded") == 2


async def test_a_key_reused_for_another_request_is_refused_422(simulators, gateways, http):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await create(http, gw.url)
    assert (await post(http, gw.url, "k", message(text="one")))[0] == 200
    status, _, body = await post(http, gw.url, "k", message(text="two"))
    assert status == 422 and body["success"] is False
    assert len(sims[0].calls(SEND)) == 1
    # a key is scoped by route and session: the same key elsewhere is another request
    await create(http, gw.url, "s-2")
    assert (await post(http, gw.url, "k", message("s-2", text="two")))[0] == 200
    media = {**message(), "media_url": "https://example.test/a.png"}
    assert (await post(http, gw.url, "k", media, path="/api/messages/send-media"))[0] == 200
    assert sample(gw, "gateway_idempotency_total", result="mismatch") == 1


@pytest.mark.parametrize("key", ["", "x" * 256, "héllo", "two words", '"quoted"inside"'])
async def test_a_bad_key_is_refused_400_and_not_forwarded(simulators, gateways, http, key):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await create(http, gw.url)
    headers = {"Idempotency-Key": key}
    async with http.post(f"{gw.url}{SEND}", json=message(), headers=headers) as resp:
        assert resp.status == 400
        assert "Idempotency-Key" in (await resp.json())["error"]
    assert sims[0].calls(SEND) == []


async def test_the_drafts_quoted_form_is_the_same_key(simulators, gateways, http):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await create(http, gw.url)
    assert (await post(http, gw.url, '"abc"', message()))[0] == 200
    status, headers, _ = await post(http, gw.url, "abc", message())
    assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert len(sims[0].calls(SEND)) == 1


async def test_concurrent_repeats_through_two_gateways_reach_the_instance_once(
    simulators, gateways, http
):
    sims = await simulators(1, latency=0.3)
    first = await gateways([sims[0].url])
    second = await gateways([sims[0].url])
    await create(http, first.url)
    answers = await asyncio.gather(
        *(post(http, (first, second)[i % 2].url, "race:1", message()) for i in range(10))
    )
    statuses = sorted(status for status, _, _ in answers)
    assert statuses == [200] + [409] * 9
    for status, headers, body in answers:
        if status == 409:
            assert headers["X-Gateway-Outcome"] == "unknown" and body["outcome"] == "unknown"
    assert len(sims[0].calls(SEND)) == 1
    # once answered, a repeat through either gateway gets the answer
    for gw in (first, second):
        status, headers, _ = await post(http, gw.url, "race:1", message())
        assert status == 200 and headers["Idempotent-Replayed"] == "true"
    assert len(sims[0].calls(SEND)) == 1


async def test_a_create_with_a_key_is_made_once(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims])
    body = {"session_id": "new-1", "api_key": API_KEY}
    first = await post(http, gw.url, "create-1", body, path="/api/sessions")
    again = await post(http, gw.url, "create-1", body, path="/api/sessions")
    assert first[0] == again[0] == 200 and again[1]["Idempotent-Replayed"] == "true"
    creates = [c for s in sims for c in s.calls("/api/sessions") if c.method == "POST"]
    assert len(creates) == 1


async def test_an_unknown_outcome_holds_the_key_409(simulators, gateways, http):
    sims = await simulators(1, latency=0.4)
    patient = await gateways([sims[0].url])
    hasty = await gateways([sims[0].url], read_timeout=0.2)
    await create(http, patient.url)
    status, headers, _ = await post(http, hasty.url, "slow:1", message())
    assert status == 504 and headers["X-Gateway-Outcome"] == "unknown"
    await eventually(lambda: _calls(sims[0], 1))  # the instance did get it, and acted
    for gw in (hasty, patient):
        status, headers, body = await post(http, gw.url, "slow:1", message())
        assert status == 409 and headers["X-Gateway-Outcome"] == "unknown"
        assert "no answer" in body["error"]
    assert len(sims[0].calls(SEND)) == 1
    assert sample(hasty, "gateway_idempotency_total", result="unknown") == 1


async def _calls(sim: Any, count: int) -> bool:
    return len(sim.calls(SEND)) >= count


async def test_what_was_not_sent_frees_the_key(simulators, gateways, http, redis_client):
    sims = await simulators(1)
    gw = await gateways([sims[0].url, f"http://127.0.0.1:{free_port()}"])
    await create(http, gw.url)
    # the session's instance is gone: the gateway answers not-sent, and the key is free
    await sims[0].runner.cleanup()
    status, headers, _ = await post(http, gw.url, "later:1", message())
    assert status in (502, 503) and headers["X-Gateway-Outcome"] == "not-sent"
    name = f"{gw.gw.settings.key_prefix}idempotency:{scope(SEND, 's-1', 'later:1')}"
    assert not await redis_client.exists(name)


async def test_an_instance_refusal_frees_the_key_and_a_5xx_is_kept(
    simulators, gateways, http, teardown
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    await create(http, gw.url)
    wrong = {**message(), "api_key": "wrong"}
    assert (await post(http, gw.url, "k:1", wrong))[0] == 401
    status, headers, _ = await post(http, gw.url, "k:1", message())  # corrected: it goes
    assert status == 200 and "Idempotent-Replayed" not in headers

    sends: list[bytes] = []

    async def failing_send(request: web.Request) -> web.Response:
        sends.append(await request.read())
        headers = {"Idempotent-Replayed": "true"}  # an instance's word is not the gateway's
        return web.json_response({"error": "Evaluation failed"}, status=500, headers=headers)

    async def ok(request: web.Request) -> web.Response:
        return web.json_response({"success": True})

    instance = web.Application()
    instance.router.add_get("/health", ok)
    instance.router.add_post("/api/sessions", ok)
    instance.router.add_post(SEND, failing_send)
    runner, url = await serve(instance)
    teardown.push_async_callback(runner.cleanup)
    other = await gateways([url])
    assert (await post(http, other.url, None, message("x"), "/api/sessions"))[0] == 200
    first = await post(http, other.url, "k:2", message("x"))
    again = await post(http, other.url, "k:2", message("x"))
    assert first[0] == again[0] == 500 and "Idempotent-Replayed" not in first[1]
    assert again[1]["Idempotent-Replayed"] == "true"
    assert again[2] == {"error": "Evaluation failed"} and len(sends) == 1


async def test_without_redis_a_keyed_send_is_refused_and_an_unkeyed_one_goes(
    simulators, gateways, http, own_redis
):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], redis_url=own_redis.url)
    await create(http, gw.url)
    own_redis.stop()
    status, headers, _ = await post(http, gw.url, "k:1", message())
    assert status == 503 and headers["X-Gateway-Outcome"] == "not-sent"
    assert sims[0].calls(SEND) == []
    assert (await post(http, gw.url, None, message()))[0] == 200  # routed from memory
    assert sample(gw, "gateway_idempotency_total", result="unavailable") == 1


async def test_a_caller_that_leaves_still_gets_its_answer_kept(simulators, gateways, http):
    sims = await simulators(1, latency=0.3)
    gw = await gateways([sims[0].url])
    await create(http, gw.url)
    impatient = aiohttp.ClientTimeout(total=0.1)
    with pytest.raises(TimeoutError):
        async with http.post(
            f"{gw.url}{SEND}", json=message(), headers={"Idempotency-Key": "k"}, timeout=impatient
        ):
            pass
    await eventually(lambda: _calls(sims[0], 1))

    async def kept() -> bool:
        status, headers, _ = await post(http, gw.url, "k", message())
        return status == 200 and headers.get("Idempotent-Replayed") == "true"

    await eventually(kept)
    assert len(sims[0].calls(SEND)) == 1


async def test_a_gateway_killed_mid_call_leaves_the_key_at_409(
    simulators, gateways, http, redis_prefix, redis_client
):
    sims = await simulators(1, latency=0.5)
    port = free_port()
    env = gateway_env([sims[0].url], redis_prefix, GATEWAY_PORT=str(port))
    doomed = await Spawned.start("gateway", env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        await wait_healthy(http, url)
        await create(http, url)
        sending = asyncio.ensure_future(post(http, url, "kill:1", message()))
        name = f"{redis_prefix}wa-gateway:idempotency:{scope(SEND, 's-1', 'kill:1')}"

        async def held() -> bool:
            return await redis_client.hget(name, "state") == "flight"

        await eventually(held)
        doomed.signal(signal.SIGKILL)
        with pytest.raises(aiohttp.ClientError):
            await sending
    finally:
        await doomed.stop()
    survivor = await gateways([sims[0].url])
    status, headers, _ = await post(http, survivor.url, "kill:1", message())
    assert status == 409 and headers["X-Gateway-Outcome"] == "unknown"
    assert len(sims[0].calls(SEND)) <= 1


def test_decisions_the_key_rule_the_fingerprint_and_what_settles_a_key():
    assert parse_key("job:1") == "job:1" and parse_key('"job:1"') == "job:1"
    assert parse_key("") is None and parse_key("a b") is None and parse_key("x" * 256) is None
    a = fingerprint("POST", SEND, "s", {"b": 1, "a": [1, 2]}, b"ignored")
    assert a == fingerprint("POST", SEND + "/", "s", {"a": [1, 2], "b": 1}, b"")
    assert a != fingerprint("POST", SEND, "t", {"b": 1, "a": [1, 2]}, b"")
    assert fingerprint("POST", SEND, "s", None, b"x") != fingerprint("POST", SEND, "s", None, b"y")
    assert settle(200, True, None) is Settle.KEEP and settle(500, True, None) is Settle.KEEP
    for refused in (400, 401, 404, 408, 429, 503):
        assert settle(refused, True, None) is Settle.FREE
    assert settle(504, False, "unknown") is Settle.UNKNOWN
    assert settle(503, False, "not-sent") is Settle.FREE
    held = Held(State.DONE, a)
    assert repeat(held, a) is Repeat.REPLAY and repeat(held, "other") is Repeat.MISMATCH
    assert repeat(Held(State.FLIGHT, a), a) is Repeat.IN_FLIGHT
    assert repeat(Held(State.UNKNOWN, a), a) is Repeat.UNKNOWN
