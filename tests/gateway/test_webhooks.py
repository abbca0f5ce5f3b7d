"""The webhook relay end to end: instances post events to the gateway, the workers deliver
them to a backend that checks signatures as Laravel does."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
import redis.asyncio as aioredis
from aiohttp import web
from yarl import URL

from dev.backend import Backend, Delivered
from gateway.shared.outbox import Backlog, Outbox
from gateway.shared.signature import sign
from gateway.state.pins import PinChange
from tests.harness import (
    API_KEY,
    REDIS_URL,
    RunningGateway,
    eventually,
    sample,
    spawn,
)
from workers.connections import redis_client
from workers.delivery import RelayConfig, WebhookRelay
from workers.metrics import WorkerMetrics

SECRET = "webhook-test-secret"
PATH = "/api/whatsapp/webhooks/webjs"
FAST = {"backoff_base": 0.05, "backoff_cap": 0.2, "timeout": 2.0, "idle_wait": 0.2}


def event(name: str, session: Any, seq: int, **data: Any) -> bytes:
    return json.dumps({"event": name, "data": {"session_id": session, "seq": seq, **data}}).encode()


def ago(seconds: int) -> str:
    """An ``X-Timestamp`` of ``seconds`` ago: when the instance signed it."""
    return str(int(time.time()) - seconds)


async def post(
    http: aiohttp.ClientSession,
    gateway: str,
    body: bytes,
    *,
    instance: str | None = "http://127.0.0.1:3001",
    secret: str = SECRET,
    timestamp: str | None = None,
    signature: str | None = None,
    path: str = PATH,
    omit: tuple[str, ...] = (),
) -> tuple[int, Any]:
    """POST an event as an instance does: signed, with its own URL."""
    timestamp = timestamp or str(int(time.time()))
    headers = {
        "Content-Type": "application/json",
        "X-Timestamp": timestamp,
        "X-HMAC-Signature": signature or sign(secret, timestamp, body),
    }
    if instance is not None:
        headers["X-Instance-Url"] = instance
    for name in omit:
        del headers[name]
    async with http.post(URL(gateway + path, encoded=True), data=body, headers=headers) as r:
        return r.status, await r.json()


def outbox_of(running: RunningGateway, redis: aioredis.Redis) -> Outbox:
    return Outbox(redis, running.gw.settings.key_prefix)


def count(relay: WebhookRelay, outcome: str) -> float:
    value = relay.metrics.registry.get_sample_value("workers_webhooks_total", {"outcome": outcome})
    return value or 0.0


@pytest.fixture
async def outbox_redis() -> AsyncIterator[aioredis.Redis]:
    client = redis_client(REDIS_URL)
    yield client
    await client.aclose()


@pytest.fixture
async def backend() -> AsyncIterator[Backend]:
    """The backend, down until the test starts it; no other server can take its port."""
    b = Backend.down(SECRET)
    yield b
    await b.stop()


def seq_of(d: Delivered) -> int:
    """The test's own sequence number of an event, carried in ``data.seq``."""
    return int(d.payload["data"]["seq"])


def by_session(backend: Backend) -> dict[str | None, list[int]]:
    """The ``data.seq`` numbers each session received, in arrival order."""
    seen: dict[str | None, list[int]] = {}
    for d in backend.received:
        seen.setdefault(d.session, []).append(seq_of(d))
    return seen


@pytest.fixture
async def relays(redis_prefix: str) -> AsyncIterator[Callable[..., Awaitable[WebhookRelay]]]:
    """Webhook relays running in this process, as ``python -m workers`` runs them."""
    running: list[tuple[WebhookRelay, asyncio.Task[None], aioredis.Redis]] = []

    async def start(laravel_url: str, **overrides: Any) -> WebhookRelay:
        client = redis_client(REDIS_URL)
        config = RelayConfig(
            laravel_url=laravel_url,
            secret=SECRET,
            key_prefix=f"{redis_prefix}wa-gateway:",
            **{**FAST, **overrides},
        )
        relay = WebhookRelay(config, client, WorkerMetrics())
        running.append((relay, asyncio.create_task(relay.run()), client))
        return relay

    yield start
    for relay, task, client in running:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()


async def settled(outbox: Outbox) -> Backlog:
    """Wait until nothing waits in the outbox."""
    return await _until(lambda: outbox.backlog(time.time()), lambda b: b.waiting == 0)


async def _until(check: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool]) -> Any:
    result = None

    async def holds() -> bool:
        nonlocal result
        result = await check()
        return ok(result)

    await eventually(holds, timeout=20)
    return result


# --- point 7: the scenarios of the issue ---------------------------------------------------


async def test_backend_down_while_60_events_of_6_sessions_arrive_then_all_once_in_order(
    gateways, simulators, relays, backend, http, outbox_redis
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], hmac_secret=SECRET)
    relay = await relays(backend.url)  # the backend is down: nothing listens on its port
    down_since = time.monotonic()
    sent: dict[int, bytes] = {}
    for seq in range(60):
        session = f"s-{seq % 6}"
        body = event("message_received", session, seq, message={"body": f"hi ✓ {seq}"})
        answer = await post(http, gw.url, body, instance=sims[seq % 6 % 2].url)
        assert answer == (200, {"success": True, "queued": True})
        sent[seq] = body
    await eventually(lambda: _true(count(relay, "retried") >= 6))  # every session waited
    await asyncio.sleep(max(0.0, 3.0 - (time.monotonic() - down_since)))  # down for 3 s
    await backend.start()

    await settled(outbox_of(gw, outbox_redis))
    received = backend.received
    assert len(received) == 60
    assert len({d.webhook_id for d in received}) == 60  # each exactly once
    assert {seq_of(d): d.body for d in received} == sent  # bytes unchanged
    for session, seqs in by_session(backend).items():
        assert seqs == sorted(seqs), session  # in receive order per session
        assert len(seqs) == 10
    assert all(d.signed for d in received)
    assert all(d.path == PATH and d.content_type == "application/json" for d in received)
    assert all(d.instance == sims[seq_of(d) % 6 % 2].url for d in received)
    assert count(relay, "delivered") == 60
    assert count(relay, "dead_lettered") == 0
    assert sample(gw, "gateway_webhooks_received_total", event="message_received") == 60
    lag = relay.metrics.registry.get_sample_value("workers_webhook_delivery_lag_seconds_count")
    assert lag == 60


async def _true(value: bool) -> bool:
    return value


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("no headers", "missing_headers"),
        ("no signature", "missing_headers"),
        ("no timestamp", "missing_headers"),
        ("other secret", "bad_signature"),
        ("tampered body", "bad_signature"),
        ("upper-case hex", "bad_signature"),
        ("stale", "stale_timestamp"),
        ("from the future", "stale_timestamp"),
        ("timestamp not a number", "bad_timestamp"),
    ],
)
async def test_unproven_events_get_401_and_nothing_is_kept_or_delivered(
    case, reason, gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:1"], hmac_secret=SECRET)
    await backend.start()
    await relays(backend.url)
    body = event("session_ready", "s-1", 1)
    now = int(time.time())
    kwargs: dict[str, Any] = {
        "no headers": {"omit": ("X-Timestamp", "X-HMAC-Signature")},
        "no signature": {"omit": ("X-HMAC-Signature",)},
        "no timestamp": {"omit": ("X-Timestamp",)},
        "other secret": {"secret": "not-the-secret"},
        "tampered body": {"signature": sign(SECRET, str(now), event("session_ready", "s-2", 1))},
        "upper-case hex": {"signature": sign(SECRET, str(now), body).upper()},
        "stale": {"timestamp": str(now - 301)},
        "from the future": {"timestamp": str(now + 301)},
        "timestamp not a number": {"timestamp": f"{now}.5"},
    }[case]
    status, answer = await post(http, gw.url, body, **kwargs)
    assert status == 401
    assert answer["success"] is False and answer["error"]
    assert sample(gw, "gateway_webhooks_rejected_total", reason=reason) == 1
    outbox = outbox_of(gw, outbox_redis)
    assert (await outbox.backlog(time.time())).waiting == 0
    assert gw.gw.pins.sessions.get("s-1") is None

    sentinel = event("session_ready", "s-3", 2)
    assert (await post(http, gw.url, sentinel))[0] == 200
    await settled(outbox)
    assert [d.body for d in backend.received] == [sentinel]


async def test_session_ready_from_another_instance_repins_before_any_request(
    gateways, simulators, http, redis_client
):
    a, b = await simulators(2)
    gw = await gateways([a.url, b.url], hmac_secret=SECRET)
    async with http.post(
        f"{gw.url}/api/sessions", json={"session_id": "moving", "api_key": API_KEY}
    ) as r:
        assert r.headers["X-WhatsApp-Instance"] == a.url
    # The session moves: instance a loses it, instance b restores it and tells the backend.
    a.sessions.pop("moving")
    async with http.post(f"{b.url}/api/sessions/moving/restore", json={"api_key": API_KEY}):
        pass
    changes: list[PinChange] = []
    gw.gw.pins.on_change(changes.append)  # e.g. the database writer
    as_b_writes_itself = b.url.replace("127.0.0.1", "localhost") + "/"
    ready = event("session_ready", "moving", 1, status="connected", phone_number="628123")
    assert (await post(http, gw.url, ready, instance=as_b_writes_itself))[0] == 200

    # Before any request: memory and Redis both say b, and the listeners heard it.
    assert gw.gw.pins.sessions["moving"] == b.url
    assert changes == [PinChange("moving", b.url, None, "webhook")]
    key = f"{gw.gw.settings.key_prefix}sessions"
    assert await redis_client.hget(key, "moving") == b.url
    async with http.get(f"{gw.url}/api/sessions/moving/status?api_key={API_KEY}") as r:
        assert r.status == 200
        assert r.headers["X-WhatsApp-Instance"] == b.url
    assert sample(gw, "gateway_rediscoveries_total", result="found") is None
    assert sample(gw, "gateway_webhook_pins_total", upstream=b.url) == 1


@pytest.mark.parametrize("name", ["session_disconnected", "session_error", "typing_indicator"])
async def test_events_that_do_not_place_a_session_change_no_pin(name, gateways, http):
    gw = await gateways(["http://127.0.0.1:3001", "http://127.0.0.1:3002"], hmac_secret=SECRET)
    await gw.gw.pins.pin_session("s-1", "http://127.0.0.1:3001", source="admin")
    body = event(name, "s-1", 1)
    assert (await post(http, gw.url, body, instance="http://127.0.0.1:3002"))[0] == 200
    assert gw.gw.pins.sessions["s-1"] == "http://127.0.0.1:3001"


async def test_event_from_an_unknown_instance_is_kept_and_changes_no_pin(
    gateways, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    body = event("session_ready", "s-1", 1)
    for n, instance in enumerate(
        ("http://10.0.0.9:3001", "http://127.0.0.1:3009", "not a url", None)
    ):
        assert (await post(http, gw.url, body, instance=instance, timestamp=ago(10 - n)))[0] == 200
    assert "s-1" not in gw.gw.pins.sessions
    assert (await outbox_of(gw, outbox_redis).backlog(time.time())).waiting == 4


async def test_a_session_answered_500_forever_holds_up_no_other_session(
    gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)

    def answer(d: Delivered) -> web.Response:
        if d.session == "broken":
            return web.json_response({"message": "Server Error"}, status=500)
        return web.json_response({"success": True})

    backend.answer = answer
    await backend.start()
    relay = await relays(backend.url, concurrency=1)  # one slot: the failing lane must not keep it
    for seq in range(20):
        session = ("broken", "g-1", "g-2", "g-3")[seq % 4]
        assert (await post(http, gw.url, event("message_sent", session, seq)))[0] == 200

    backlog = await _until(
        lambda: outbox_of(gw, outbox_redis).backlog(time.time()), lambda b: b.waiting == 5
    )
    assert backlog.lanes == 1  # only the broken session still waits
    seen = by_session(backend)
    for session in ("g-1", "g-2", "g-3"):
        assert seen[session] == [s for s in range(20) if s % 4 == int(session[-1])]
    assert set(seen["broken"]) == {0}  # its later events wait behind its head
    assert count(relay, "retried") >= 1
    await eventually(lambda: _true(count(relay, "retried") >= 3))  # and it keeps trying


async def test_an_instance_retry_of_the_last_event_is_dropped_and_any_event_between_keeps_it(
    gateways, relays, backend, http, outbox_redis
):
    a, b = "http://127.0.0.1:3001", "http://127.0.0.1:3002"
    gw = await gateways([a, b], hmac_secret=SECRET)
    await backend.start()
    same, other = event("message_received", "s-1", 1), event("message_received", "s-1", 2)
    steps = [  # (body, instance, kept): each signed anew, one second after the other
        (same, a, True),
        (same, a, False),  # the instance got no answer and sent it again
        (same, a.upper(), False),  # the same instance, spelled otherwise
        (same, b, True),  # another instance: another event
        (same, a, True),  # b's event came between: a new one
        (other, a, True),
        (same, a, True),  # the other event came between
        (event("message_received", "s-2", 1), a, True),  # another session's lane
        (same, a, False),  # ... leaves s-1's last event as it was
    ]
    for n, (body, instance, kept) in enumerate(steps):
        answer = await post(http, gw.url, body, instance=instance, timestamp=ago(20 - n))
        duplicate = {} if kept else {"duplicate": True}
        assert answer == (200, {"success": True, "queued": True, **duplicate}), n
    await relays(backend.url)
    await settled(outbox_of(gw, outbox_redis))
    delivered = [(d.session, seq_of(d), d.instance) for d in backend.received]
    assert [d for d in delivered if d[0] == "s-1"] == [
        ("s-1", 1, a),
        ("s-1", 1, b),
        ("s-1", 1, a),
        ("s-1", 2, a),
        ("s-1", 1, a),
    ]
    assert [d for d in delivered if d[0] != "s-1"] == [("s-2", 1, a)]
    assert sample(gw, "gateway_webhooks_duplicates_total", kind="repeat") == 3
    assert sample(gw, "gateway_webhooks_duplicates_total", kind="replay") is None
    # Delivered and gone, it is still a repeat within the window.
    assert (await post(http, gw.url, same, timestamp=ago(5)))[1].get("duplicate") is True


async def test_a_repeat_after_the_dedup_window_is_a_new_event(
    gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET, webhook_dedup_window=0.3)
    await backend.start()
    body = event("session_ready", "s-1", 1)
    assert (await post(http, gw.url, body, timestamp=ago(10)))[1].get("duplicate") is None
    assert (await post(http, gw.url, body, timestamp=ago(9)))[1].get("duplicate") is True
    last = outbox_of(gw, outbox_redis).keys.last("s-1")

    async def window_over() -> bool:
        return not await outbox_redis.exists(last)

    await eventually(window_over)
    assert (await post(http, gw.url, body, timestamp=ago(8)))[1].get("duplicate") is None
    await relays(backend.url)
    await settled(outbox_of(gw, outbox_redis))
    assert [d.body for d in backend.received] == [body, body]


def blazz(name: str, session: str, **data: Any) -> bytes:
    """An event as blazz's ``sendToLaravel`` posts it: no id, no time, the same bytes each time."""
    data = {"workspace_id": 7, "session_id": session, **data}
    return json.dumps({"event": name, "data": data}).encode()


QR = blazz("qr_code_generated", "s-1", qr_code="2@AbC,s-1,1")
AUTHENTICATED = blazz("session_authenticated", "s-1", status="authenticated")
READY = blazz(
    "session_ready",
    "s-1",
    phone_number="628123456789",
    status="connected",
    platform="android",
)
DISCONNECTED = blazz("session_disconnected", "s-1", reason="logout")


async def test_create_delete_create_delete_delivers_all_six_events(
    gateways, simulators, relays, backend, http, outbox_redis
):
    [sim] = await simulators(1)
    gw = await gateways([sim.url], hmac_secret=SECRET)
    await backend.start()
    await relays(backend.url)
    sent: list[bytes] = []
    clock = iter(range(60, 0, -1))  # the instance signs each event a second after the last

    async def report(body: bytes) -> None:
        answer = await post(http, gw.url, body, instance=sim.url, timestamp=ago(next(clock)))
        assert answer == (200, {"success": True, "queued": True}), body
        sent.append(body)

    for _ in range(2):
        create = {"session_id": "s-1", "workspace_id": 7, "api_key": API_KEY}
        async with http.post(f"{gw.url}/api/sessions", json=create) as r:
            assert r.status == 200
        await report(QR)
        await report(READY)
        async with http.delete(f"{gw.url}/api/sessions/s-1", json={"api_key": API_KEY}) as r:
            assert r.status == 200
        await report(DISCONNECTED)
    await settled(outbox_of(gw, outbox_redis))
    assert [d.body for d in backend.received] == sent == [QR, READY, DISCONNECTED] * 2
    assert len({d.webhook_id for d in backend.received}) == 6
    assert sample(gw, "gateway_webhooks_duplicates_total", kind="repeat") is None


async def test_regenerate_qr_and_reconnect_deliver_every_authenticated_and_ready(
    gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    await gw.gw.pins.pin_session("s-1", "http://127.0.0.1:3001", source="admin")
    await backend.start()
    await relays(backend.url)
    pairing = [QR, AUTHENTICATED, READY]
    sent = [
        *pairing,  # create
        *pairing,  # regenerate-qr: the same QR string again, then the phone scans it
        DISCONNECTED,  # reconnect: disconnect, then pair again
        *pairing,
    ]
    for n, body in enumerate(sent):
        answer = await post(http, gw.url, body, timestamp=ago(60 - n))
        assert answer == (200, {"success": True, "queued": True}), n
    await settled(outbox_of(gw, outbox_redis))
    assert [d.body for d in backend.received] == sent
    assert [d.event for d in backend.received].count("session_ready") == 3


async def test_replays_of_a_signed_event_are_dropped_whatever_else_they_change(
    gateways, simulators, relays, backend, http, outbox_redis
):
    a, b = await simulators(2)
    async with http.post(f"{a.url}/api/sessions", json={"session_id": "s-1", "api_key": API_KEY}):
        pass
    gw = await gateways([a.url, b.url], hmac_secret=SECRET)
    await gw.gw.pins.pin_session("s-1", a.url, source="admin")
    await backend.start()
    timestamp = ago(3)
    signature = sign(SECRET, timestamp, READY)
    captured = {"timestamp": timestamp, "signature": signature}
    assert await post(http, gw.url, READY, instance=a.url, **captured) == (
        200,
        {"success": True, "queued": True},
    )
    replays: dict[str, dict[str, Any]] = {
        "exact": {"instance": a.url},
        "X-Instance-Url in capitals": {"instance": a.url.upper()},
        "a query on the path": {"instance": a.url, "path": PATH + "?x=1"},
        "another path under the prefix": {"instance": a.url, "path": "/api/whatsapp/webhooks/x"},
        "another configured instance": {"instance": b.url},
    }
    for case, changed in replays.items():
        answer = await post(http, gw.url, READY, **captured, **changed)
        assert answer == (200, {"success": True, "queued": True, "duplicate": True}), case
        assert gw.gw.pins.sessions["s-1"] == a.url, case
    await relays(backend.url)
    await settled(outbox_of(gw, outbox_redis))
    [delivered] = backend.received
    assert (delivered.body, delivered.instance, delivered.path) == (READY, a.url, PATH)
    assert sample(gw, "gateway_webhooks_duplicates_total", kind="replay") == 5
    assert sample(gw, "gateway_webhook_pins_total", upstream=b.url) is None
    assert await gw.gw.pins.session("s-1", fresh=True) == a.url


async def test_an_event_naming_an_instance_that_does_not_hold_its_session_moves_no_pin(
    gateways, simulators, http
):
    a, b = await simulators(2)
    async with http.post(f"{a.url}/api/sessions", json={"session_id": "s-1", "api_key": API_KEY}):
        pass
    gw = await gateways([a.url, b.url], hmac_secret=SECRET)
    await gw.gw.pins.pin_session("s-1", a.url, source="admin")  # s-2: no pin, no instance
    # Captured from a and sent first, with b's URL, before a's own delivery arrives:
    # a new signature, so it is kept and delivered, but b does not hold the session.
    for n, session in enumerate(("s-1", "s-2")):
        ready = blazz("session_ready", session, status="connected")
        answer = await post(http, gw.url, ready, instance=b.url, timestamp=ago(9 - n))
        assert answer == (200, {"success": True, "queued": True})
    assert gw.gw.pins.sessions["s-1"] == a.url
    assert "s-2" not in gw.gw.pins.sessions
    assert sample(gw, "gateway_webhook_pins_total", upstream=b.url) is None
    assert len(b.calls("/api/sessions/s-1/status")) == 1  # b was asked, and said no

    # The session really moves to b: b's next event moves the pin.
    a.sessions.pop("s-1")
    async with http.post(f"{b.url}/api/sessions/s-1/restore", json={"api_key": API_KEY}):
        pass
    answer = await post(http, gw.url, READY, instance=b.url, timestamp=ago(5))
    assert answer == (200, {"success": True, "queued": True})
    assert gw.gw.pins.sessions["s-1"] == b.url
    assert sample(gw, "gateway_webhook_pins_total", upstream=b.url) == 1


async def test_a_422_is_dead_lettered_at_once_and_failed_retry_sends_it_again(
    gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    refuse = {"on": True}

    def answer(d: Delivered) -> web.Response:
        if seq_of(d) == 1 and refuse["on"]:
            return web.json_response({"message": "The data.chat field is required."}, status=422)
        return web.json_response({"success": True})

    backend.answer = answer
    await backend.start()
    relay = await relays(backend.url)
    for seq in (1, 2):
        assert (await post(http, gw.url, event("message_received", "s-1", seq)))[0] == 200
    outbox = outbox_of(gw, outbox_redis)
    backlog = await settled(outbox)
    assert by_session(backend) == {"s-1": [1, 2]}  # tried once; its lane went on
    assert backlog.dead == 1
    assert count(relay, "retried") == 0
    [letter] = await outbox.dead_letters()
    assert letter.status == "422"
    assert "The data.chat field is required." in letter.error
    assert letter.body == event("message_received", "s-1", 1)

    refuse["on"] = False
    assert await outbox.requeue(letter.id, time.time())
    backlog = await settled(outbox)
    assert by_session(backend) == {"s-1": [1, 2, 1]}
    assert backend.received[-1].webhook_id == letter.id
    assert backlog.dead == 0


async def test_sigkill_of_the_worker_mid_delivery_loses_nothing_and_repeats_only_that_event(
    gateways, backend, http, outbox_redis, redis_prefix
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    release = asyncio.Event()
    held: list[Delivered] = []

    async def answer(d: Delivered) -> web.Response:
        if d.session == "a" and seq_of(d) == 3 and not held:
            held.append(d)
            await release.wait()  # the worker dies while this request is open
        return web.json_response({"success": True})

    backend.answer = answer
    await backend.start()
    env = {
        "GATEWAY_REDIS_URL": REDIS_URL,
        "GATEWAY_REDIS_PREFIX": redis_prefix,
        "HMAC_SECRET": SECRET,
        "LARAVEL_URL": backend.url,
        "GATEWAY_WORKERS_METRICS_PORT": "0",
        "GATEWAY_WORKERS_WEBHOOK_TIMEOUT": "1.5",
        "GATEWAY_WORKERS_WEBHOOK_BACKOFF_BASE": "0.05",
        "GATEWAY_LOG_LEVEL": "WARNING",
    }
    first = spawn("workers", env=env)
    try:
        for seq in range(1, 4):
            await post(http, gw.url, event("message_received", "b", seq))
        for seq in range(1, 6):
            await post(http, gw.url, event("message_received", "a", seq))
        outbox = outbox_of(gw, outbox_redis)
        # b is done and settled, a's third event is on its way: only a's lane is in flight.
        await _until(lambda: outbox.backlog(time.time()), lambda b: (b.waiting, b.lanes) == (3, 1))
        await eventually(lambda: _true(bool(held)))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        for session, seq in (("a", 6), ("b", 4)):
            await post(http, gw.url, event("message_received", session, seq))

        second = spawn("workers", env=env)
        try:
            await settled(outbox)
            assert by_session(backend) == {"b": [1, 2, 3, 4], "a": [1, 2, 3, 3, 4, 5, 6]}
            repeats = Counter(d.webhook_id for d in backend.received)
            assert sorted(repeats.values()) == [1] * 9 + [2]
            assert repeats[held[0].webhook_id] == 2
            assert all(d.signed for d in backend.received)
        finally:
            second.send_signal(signal.SIGTERM)
            assert second.wait(15) == 0, second.stderr.read().decode() if second.stderr else ""
    finally:
        release.set()
        if first.poll() is None:
            first.kill()
            first.wait()


# --- the route against hostile or odd input ------------------------------------------------


async def test_without_a_secret_the_route_is_off(gateways, http, outbox_redis):
    gw = await gateways(["http://127.0.0.1:3001"])  # no HMAC_SECRET
    status, answer = await post(http, gw.url, event("session_ready", "s-1", 1))
    assert status == 404
    assert "HMAC_SECRET" in answer["error"]
    assert (await outbox_of(gw, outbox_redis).backlog(time.time())).waiting == 0
    assert sample(gw, "gateway_webhooks_rejected_total", reason="off") == 1


async def test_oversized_bodies_are_refused_with_413(gateways, http, outbox_redis):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET, webhook_max_body_bytes=1024)
    big = event("message_received", "s-1", 1, text="x" * 2000)
    assert (await post(http, gw.url, big))[0] == 413

    async def chunks():  # no Content-Length: the limit holds while reading
        for _ in range(8):
            yield b"x" * 512

    headers = {"X-Timestamp": "1", "X-HMAC-Signature": "x", "Content-Type": "application/json"}
    async with http.post(gw.url + PATH, data=chunks(), headers=headers) as r:
        assert r.status == 413
        assert (await r.json())["success"] is False
    assert (await outbox_of(gw, outbox_redis).backlog(time.time())).waiting == 0
    assert sample(gw, "gateway_webhooks_rejected_total", reason="too_large") == 2


async def test_other_methods_and_odd_paths_are_refused(gateways, http):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    async with http.get(gw.url + PATH) as r:
        assert r.status == 405
        assert (await r.json())["success"] is False
    body = event("session_ready", "s-1", 1)
    for path in (
        "/api/whatsapp/webhooks/../../gateway/sessions/x",
        "/api/whatsapp/webhooks/./webjs",
        "/api/whatsapp/webhooks//webjs",
        "/api/whatsapp/webhooks/%2e%2e/x",
        "/api/whatsapp/webhooks/" + "x" * 3000,
        "/api/whatsapp/%77ebhooks/webjs",  # decodes to the prefix, but is not it
        '/api/whatsapp/webhooks/a"<b>',
        "/api/whatsapp/webhooks/a%zz",
        "/api/whatsapp/webhooks/a\\b",
        "/api/whatsapp/webhooks/a{b}|^`",
    ):
        status, answer = await post(http, gw.url, body, path=path)
        assert (status, answer["success"]) == (400, False), path
    assert sample(gw, "gateway_webhooks_rejected_total", reason="bad_path") == 10


async def test_any_signed_body_is_relayed_unchanged_in_the_shared_lane(
    gateways, relays, backend, http, outbox_redis
):
    gw = await gateways(["http://127.0.0.1:3001"], hmac_secret=SECRET)
    await backend.start()
    await relays(backend.url)
    bodies = [
        b"not json at all \xff",
        b"[" * 50_000 + b"]" * 50_000,
        json.dumps({"event": "session_ready", "data": {"session_id": {"$ne": None}}}).encode(),
        json.dumps({"event": "session_ready", "data": {"session_id": "s" * 500}}).encode(),
    ]
    for body in bodies:
        assert (await post(http, gw.url, body, path=PATH + "?source=webjs"))[0] == 200
    await settled(outbox_of(gw, outbox_redis))
    assert [d.body for d in backend.received] == bodies  # shared lane: receive order
    assert {d.path for d in backend.received} == {PATH + "?source=webjs"}
    assert gw.gw.pins.sessions == {}
    assert sample(gw, "gateway_webhooks_received_total", event="other") == 2


async def test_redis_down_answers_503_so_the_instance_sends_again(
    gateways, simulators, own_redis, http
):
    a, b = await simulators(2)
    async with http.post(f"{b.url}/api/sessions", json={"session_id": "s-1", "api_key": API_KEY}):
        pass  # b holds s-1, not s-2
    gw = await gateways(
        [a.url, b.url], hmac_secret=SECRET, redis_url=own_redis.url, redis_timeout=0.3
    )
    own_redis.stop()
    for n, session in enumerate(("s-1", "s-2")):
        body = event("session_ready", session, 1)
        status, answer = await post(http, gw.url, body, instance=b.url, timestamp=ago(5 - n))
        assert status == 503
        assert answer["success"] is False
    # The event is genuine: routing learns from it even though it could not be kept, once
    # the instance it names says it holds the session.
    assert gw.gw.pins.sessions["s-1"] == b.url
    assert "s-2" not in gw.gw.pins.sessions
    assert sample(gw, "gateway_webhooks_rejected_total", reason="redis_down") == 2
