"""End to end: the pool sends through the real gateway to a simulated instance, and takes
the gateway's own word (``X-Gateway-Outcome``) on a send it could not finish."""

from __future__ import annotations

import json

import aiohttp

from tests.conftest import API_KEY
from tests.workers.conftest import Harness, eventually
from workers.retry import UNKNOWN_OUTCOME

SEND = {"session_id": "e2e-1", "recipient_phone": "6281234567890", "message": "hi"}


async def test_a_send_the_gateway_timed_out_is_sent_once_and_failed_with_the_reason(
    harness: Harness, simulators, gateways, http: aiohttp.ClientSession
) -> None:  # type: ignore[no-untyped-def]
    [sim] = await simulators(1, latency=0.4)
    patient = await gateways([sim.url])
    impatient = await gateways([sim.url], read_timeout=0.1)  # the same pins, in Redis
    body = {"session_id": SEND["session_id"], "api_key": API_KEY}
    async with http.post(f"{patient.url}/api/sessions", json=body) as resp:
        assert resp.status == 200, await resp.text()
    harness.env["LARAVEL_API_TOKEN"] = API_KEY

    def sent() -> int:
        return sim.sessions[SEND["session_id"]].messages_sent

    await harness.push("q", "whatsapp.send_message", SEND)
    harness.workers["gateway_url"] = patient.url
    async with harness.pool(harness.config(queues=("q",))):
        await eventually(lambda: sent() == 1, what="the first send")
        await eventually(
            lambda: harness.redis.zcard(harness.keys("q").reserved), _zero, what="acked"
        )
    assert await harness.failed() == []

    payload = await harness.push("q", "whatsapp.send_message", SEND, backoff=0)
    harness.workers["gateway_url"] = impatient.url
    async with harness.pool(harness.config(queues=("q",))):
        [entry] = await eventually(harness.failed, what="the timed-out send failed")
    assert entry["id"] == json.loads(payload)["uuid"]
    assert "answered 504 (X-Gateway-Outcome: unknown)" in entry["exception"]
    assert entry["exception"].endswith(f"({UNKNOWN_OUTCOME})")
    await eventually(lambda: sent() == 2, what="the instance sending it all the same")
    keys = harness.keys("q")
    assert await harness.redis.zcard(keys.delayed) == await harness.redis.zcard(keys.reserved) == 0


def _zero(n: int) -> bool:
    return n == 0
