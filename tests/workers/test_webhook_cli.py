"""``python -m workers stats`` and ``failed ...`` with webhook events in the outbox."""

from __future__ import annotations

import json
import time

from gateway.shared.outbox import Incoming, Outbox
from tests.workers.conftest import Harness


def incoming(session: str, n: int) -> Incoming:
    body = json.dumps({"event": "message_received", "data": {"session_id": session, "n": n}})
    return Incoming(
        path="/api/whatsapp/webhooks/webjs",
        body=body.encode(),
        instance="http://127.0.0.1:3001",
        content_type="application/json",
        name="message_received",
        lane=session,
    )


async def test_stats_show_the_webhook_backlog(harness: Harness) -> None:
    outbox = Outbox(harness.redis, f"{harness.prefix}wa-gateway:")
    for n, session in enumerate(["a", "a", "b"]):
        await outbox.receive(incoming(session, n), time.time() - 60, 600)
    result = harness.run_cli("--queue", "q", "stats")
    assert result.returncode == 0, result.stderr
    last = result.stdout.splitlines()[-1]
    assert last.startswith("webhooks: 3 waiting in 2 sessions, oldest 6")
    assert last.endswith("0 dead-lettered")


async def test_failed_lists_shows_retries_and_forgets_dead_lettered_webhooks(
    harness: Harness,
) -> None:
    outbox = Outbox(harness.redis, f"{harness.prefix}wa-gateway:")
    for n, session in enumerate(["a", "b"]):
        await outbox.receive(incoming(session, n), time.time(), 600)
    taken, _ = await outbox.take(10, 60, time.time())
    for delivery in taken:
        await outbox.dead(delivery, time.time(), "422", '422 {"message": "invalid"}')
    ids = {d.lane: d.id for d in taken}

    listed = harness.run_cli("failed", "list")
    assert listed.returncode == 0, listed.stderr
    rows = sorted(line.split("  ") for line in listed.stdout.splitlines())
    assert [(r[0], r[2], r[3], r[4]) for r in rows] == sorted(
        (ids[s], "webhook", "message_received", '422 {"message": "invalid"}') for s in "ab"
    )
    shown = json.loads(harness.run_cli("failed", "show", ids["a"]).stdout)
    assert (shown["status"], shown["lane"], json.loads(shown["body"])["data"]["n"]) == (
        "422",
        "a",
        0,
    )

    assert harness.run_cli("failed", "retry", ids["a"]).stdout.strip() == f"retried {ids['a']}"
    backlog = await outbox.backlog(time.time())
    assert (backlog.waiting, backlog.dead) == (1, 1)
    [again], _ = await outbox.take(10, 60, time.time())
    assert (again.id, again.attempts) == (ids["a"], 1)  # attempts start over

    assert harness.run_cli("failed", "forget", ids["b"]).stdout.strip() == f"forgot {ids['b']}"
    assert await outbox.dead_letters() == []
    assert harness.run_cli("failed", "forget", ids["b"]).returncode == 1


async def test_failed_retry_all_and_flush_include_dead_lettered_webhooks(harness: Harness) -> None:
    outbox = Outbox(harness.redis, f"{harness.prefix}wa-gateway:")
    for n, session in enumerate(["a", "b", "c"]):
        await outbox.receive(incoming(session, n), time.time(), 600)
    taken, _ = await outbox.take(10, 60, time.time())
    for delivery in taken:
        await outbox.dead(delivery, time.time(), "", "timeout: still failing")
    ids = {d.lane: d.id for d in taken}

    retried = harness.run_cli("failed", "retry", ids["a"])
    assert retried.stdout.strip() == f"retried {ids['a']}"
    result = harness.run_cli("failed", "retry", "--all")
    assert result.returncode == 0, result.stderr
    assert sorted(result.stdout.split()) == sorted(["retried", ids["b"], "retried", ids["c"]])
    assert (await outbox.backlog(time.time())).waiting == 3

    taken, _ = await outbox.take(10, 60, time.time())
    for delivery in taken:
        await outbox.dead(delivery, time.time(), "410", "410 Gone")
    flushed = harness.run_cli("failed", "flush")
    assert "flushed 3 dead-lettered webhooks" in flushed.stdout
    backlog = await outbox.backlog(time.time())
    assert (backlog.waiting, backlog.dead) == (0, 0)
    assert await harness.redis.keys(f"{harness.prefix}wa-gateway:{{webhooks}}:event:*") == []
