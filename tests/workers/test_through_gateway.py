"""End to end: the pool sends through the real gateway to a simulated instance, and takes
the gateway's own word (``X-Gateway-Outcome``) on a send it could not finish."""

from __future__ import annotations

import json
import signal
from collections import Counter

import aiohttp

from tests.harness import API_KEY, sample
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

    # pushed again as it was (Laravel's queue:retry): its key's outcome is unknown, so the
    # gateway refuses it (409) even through a patient gateway, and nothing is sent again
    await harness.redis.delete(harness.failed_key)
    await harness.push_raw("q", payload)
    harness.workers["gateway_url"] = patient.url
    async with harness.pool(harness.config(queues=("q",))):
        [again] = await eventually(harness.failed, what="the repeat failed")
    assert "answered 409 (X-Gateway-Outcome: unknown)" in again["exception"]
    assert sent() == 2


def _zero(n: int) -> bool:
    return n == 0


def delivered(sim) -> Counter[str]:  # type: ignore[no-untyped-def]
    """Each message text the instance was asked to send, and how many times."""
    return Counter(json.loads(s.body)["message"] for s in sim.calls("/api/messages/send"))


async def settled(harness: Harness, queue: str = "q") -> bool:
    """Nothing of the queue waiting, delayed or reserved."""
    keys = harness.keys(queue)
    waiting = await harness.redis.llen(keys.list) + await harness.redis.zcard(keys.reserved)
    return waiting + await harness.redis.zcard(keys.delayed) == 0


async def test_workers_killed_mid_send_deliver_every_message_exactly_once(
    harness: Harness, simulators, gateways, http: aiohttp.ClientSession
) -> None:  # type: ignore[no-untyped-def]
    """The soak's failure, in short: a worker SIGKILLed with sends in flight. Its jobs run
    again once their reservations expire, with the same keys: the gateway answers them from
    what it kept, and no message goes out twice."""
    [sim] = await simulators(1, latency=0.3)
    gw = await gateways([sim.url])
    sid = SEND["session_id"]
    async with http.post(f"{gw.url}/api/sessions", json={"session_id": sid, "api_key": API_KEY}):
        pass
    harness.env["LARAVEL_API_TOKEN"] = API_KEY
    harness.workers["gateway_url"] = gw.url
    total = 48
    for n in range(total):
        await harness.push("q", "whatsapp.send_message", {**SEND, "message": f"m-{n}"})
    args = ("--queue", "q", "--concurrency", "8", "--metrics-port", "0")
    args += ("--timeout", "2", "--retry-after", "3", "--backoff", "0", "--tries", "5")

    for at_least in (8, 16):  # each worker dies with sends in flight
        worker = harness.spawn(*args)
        await eventually(lambda: len(delivered(sim)), lambda n, m=at_least: n >= m, what="sends")
        await eventually(
            lambda: harness.redis.zcard(harness.keys("q").reserved), bool, what="mid-send"
        )
        worker.send_signal(signal.SIGKILL)
        worker.wait(10)
    last = harness.spawn(*args)
    await eventually(lambda: settled(harness), timeout=40, what="every job settled")
    last.send_signal(signal.SIGTERM)
    assert last.wait(10) == 0, harness.output(last)
    counts = delivered(sim)
    assert set(counts) == {f"m-{n}" for n in range(total)}
    assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1]
    assert sim.sessions[sid].messages_sent == total
    assert await harness.failed() == []
    assert sample(gw, "gateway_idempotency_total", result="replayed")  # the killed ones' reruns


async def test_a_gateway_killed_mid_send_sends_nothing_twice_and_loses_no_job(
    harness: Harness, simulators, redis_prefix, http: aiohttp.ClientSession
) -> None:  # type: ignore[no-untyped-def]
    """The gateway itself dies with sends in flight, and comes back. A job whose send it had
    taken is refused on its rerun (409, unknown outcome) and failed for a person to check;
    every other job is delivered once; none is lost."""
    from dev.ports import free_port
    from tests.harness import wait_healthy
    from tests.spawned import Spawned, gateway_env

    [sim] = await simulators(1, latency=0.3)
    port = free_port()
    env = gateway_env([sim.url], redis_prefix, GATEWAY_PORT=str(port))
    url = f"http://127.0.0.1:{port}"
    gateway = await Spawned.start("gateway", env=env)
    sid = SEND["session_id"]
    try:
        await wait_healthy(http, url)
        async with http.post(f"{url}/api/sessions", json={"session_id": sid, "api_key": API_KEY}):
            pass
        harness.env["LARAVEL_API_TOKEN"] = API_KEY
        harness.workers["gateway_url"] = url
        total = 32
        for n in range(total):
            await harness.push("q", "whatsapp.send_message", {**SEND, "message": f"g-{n}"})
        # a send that could not connect while the gateway was down is tried again a second on
        args = ("--queue", "q", "--concurrency", "4", "--metrics-port", "0", "--tries", "30")
        worker = harness.spawn(*args, "--timeout", "2", "--retry-after", "3", "--backoff", "1")

        await eventually(lambda: len(delivered(sim)), lambda n: n >= 8, what="sends under way")
        gateway.signal(signal.SIGKILL)
        await gateway.stop()
        gateway = await Spawned.start("gateway", env=env)
        await wait_healthy(http, url)
        await eventually(lambda: settled(harness), timeout=40, what="every job settled")
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(10) == 0, harness.output(worker)
    finally:
        await gateway.stop()
    counts = delivered(sim)
    assert max(counts.values()) == 1, [m for m, c in counts.items() if c > 1]
    failed = await harness.failed()
    failed_messages = {json.loads(f["payload"])["data"]["message"] for f in failed}
    assert failed, "the gateway died with no send in flight: nothing was tested"
    assert all(UNKNOWN_OUTCOME in f["exception"] for f in failed), [f["exception"] for f in failed]
    done = set(counts) - failed_messages
    assert done | failed_messages == {f"g-{n}" for n in range(total)}  # none lost
