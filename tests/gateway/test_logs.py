"""Logs of a real run: one access line per request, one line per job outcome, no secrets.

The gateway and a worker run as real processes with ``--log-format json``; the test sends
its own phone numbers, message texts, session ids and key through them (requests, a send job
that works and one that fails) and then greps everything both programs wrote.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
import redis.asyncio as aioredis

from dev.ports import free_port
from gateway.shared.laravel.jobs import encode, new_payload
from tests.harness import REDIS_URL, Sim, eventually, wait_healthy
from tests.spawned import Spawned, clean_env

pytestmark = pytest.mark.timeout(90)

ACCESS_FIELDS = {"time", "request_id", "method", "route", "status", "instance", "duration_ms"}
JOB_FIELDS = {"time", "queue", "job", "attempt", "outcome", "duration_ms"}


@pytest.fixture
async def programs(
    redis_prefix: str,
) -> AsyncIterator[Callable[..., Awaitable[tuple[Spawned, str]]]]:
    runs: list[Spawned] = []

    async def start(module: str, *args: str, **env: str) -> tuple[Spawned, str]:
        port = free_port()
        environ = clean_env(
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=redis_prefix,
            GATEWAY_PORT=str(port),
            GATEWAY_WORKERS_METRICS_PORT="0",
            **env,
        )
        run = await Spawned.start(module, *args, "--log-format", "json", env=environ)
        runs.append(run)
        return run, f"http://127.0.0.1:{port}"

    yield start
    for run in runs:
        await run.stop()


async def test_a_runs_logs_hold_no_phone_number_message_session_id_or_key(
    simulators: Callable[..., Awaitable[list[Sim]]],
    programs: Callable[..., Awaitable[tuple[Spawned, str]]],
    redis_client: aioredis.Redis,
    redis_prefix: str,
) -> None:
    tag = uuid.uuid4().hex[:10]
    key, session = f"key-{tag}", f"sess-{tag}"
    phones = [f"62811{tag[:6].encode().hex()[:7]}", f"62899{int(tag[:6], 16) % 10**7:07d}"]
    texts = [f"hello {tag} from the test", f"second text {tag}"]
    sims = await simulators(2, api_key=key)
    gateway, url = await programs(
        "gateway", WHATSAPP_INSTANCES=",".join(s.url for s in sims), LARAVEL_API_TOKEN=key
    )
    async with aiohttp.ClientSession() as http:
        await wait_healthy(http, url)
        body = {"session_id": session, "workspace_id": 7, "api_key": key}
        async with http.post(f"{url}/api/sessions", json=body) as resp:
            assert resp.status == 200, await resp.text()
        send = {"session_id": session, "recipient_phone": phones[0], "message": texts[0]}
        async with http.post(f"{url}/api/messages/send", json={**send, "api_key": key}) as resp:
            assert resp.status == 200, await resp.text()
        status_url = f"{url}/api/sessions/{session}/status?api_key={key}&phone={phones[1]}"
        async with http.get(status_url) as resp:
            assert resp.status == 200
        async with http.get(f"{url}/api/sessions/{session}-gone/status?api_key={key}") as resp:
            assert resp.status in (404, 503)
        bad = f"{phones[1]} {texts[1]}"  # not JSON
        json_type = {"Content-Type": "application/json"}
        async with http.post(f"{url}/api/messages/send", data=bad, headers=json_type) as resp:
            assert resp.status == 400

    worker, _ = await programs("workers", "run", GATEWAY_URL=url, LARAVEL_API_TOKEN=key)
    queue = f"{redis_prefix}queues:whatsapp-high"
    jobs = [
        {"session_id": session, "recipient_phone": phones[1], "message": texts[1]},
        {"session_id": f"{session}-gone", "recipient_phone": phones[0], "message": texts[0]},
    ]
    for data in jobs:
        await redis_client.rpush(queue, encode(new_payload("whatsapp.send_message", data)))
        await redis_client.rpush(f"{queue}:notify", 1)

    def both_settled(records: list[dict]) -> bool:
        return len([r for r in records if r.get("logger") == "workers.jobs"]) == 2

    await worker.logged(both_settled, timeout=30)
    await gateway.stop()
    await worker.stop()

    everything = gateway.output + "\n" + worker.output
    for secret in (key, session, *phones, *texts, tag):
        assert secret not in everything, f"{secret!r} is in the logs:\n{everything}"

    access = gateway.matching(logger="gateway.access")
    assert len(access) >= 6  # the health checks of wait_healthy, then the five calls
    for line in access:
        assert line.keys() >= ACCESS_FIELDS, line
        assert line["outcome"] in {"ok", "client_error", "error", "not-sent", "unknown"}
    sent = [a for a in access if a["route"] == "/api/messages/{action}"]
    assert [(a["method"], a["status"]) for a in sent[:2]] == [("POST", 200), ("POST", 400)]
    assert sent[0]["instance"] in {s.url for s in sims} and sent[1]["instance"] == "none"
    assert sorted(a["status"] for a in sent[2:]) == [200, 404]  # the worker's two sends

    outcomes = worker.matching(logger="workers.jobs")
    assert sorted(o["outcome"] for o in outcomes) == ["done", "failed"]
    for line in outcomes:
        assert line.keys() >= JOB_FIELDS, line
        assert (line["queue"], line["job"], line["attempt"]) == (
            "whatsapp-high",
            "whatsapp.send_message",
            1,
        )


async def test_the_access_log_can_be_turned_off(
    simulators: Callable[..., Awaitable[list[Sim]]],
    programs: Callable[..., Awaitable[tuple[Spawned, str]]],
) -> None:
    sims = await simulators(1)
    gateway, url = await programs(
        "gateway", WHATSAPP_INSTANCES=sims[0].url, GATEWAY_ACCESS_LOG="false"
    )
    async with aiohttp.ClientSession() as http:
        await wait_healthy(http, url)

        async def metrics_answer() -> bool:
            async with http.get(f"{url}/metrics") as resp:
                return resp.status == 200

        await eventually(metrics_answer)
    await gateway.stop()
    assert gateway.matching(logger="gateway.access") == []
    assert gateway.matching(logger="gateway")  # the other lines are still there
