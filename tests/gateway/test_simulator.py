"""The simulated instance, over real HTTP: it must answer as the Node instances do."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from dev.backend import Backend
from dev.ports import free_port
from dev.simulator import (
    SESSIONS,
    Session,
    SimulatorConfig,
    create_app,
    fake_phone,
    status_at,
)
from dev.webhook_sink import USER_AGENT, WEBHOOK_PATH
from tests.harness import eventually, serve

KEY = "secret"
ROOT = Path(__file__).resolve().parents[2]
Client = TestClient[Any, Any]
MakeSim = Callable[..., Awaitable[Client]]


@pytest.fixture
def sim(aiohttp_client: Any) -> MakeSim:
    """Start a simulator with these config fields (no key, never connected, by default)."""

    async def make(**fields: Any) -> Client:
        fields = {"connect_delay": 60.0, **fields}
        client: Client = await aiohttp_client(create_app(SimulatorConfig(**fields)))
        return client

    return make


async def call(client: Client, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
    async with client.request(method, path, **kwargs) as resp:
        return resp.status, await resp.json()


async def create(client: Client, session_id: str, **body: Any) -> dict[str, Any]:
    status, answer = await call(
        client, "POST", "/api/sessions", json={"session_id": session_id, **body}
    )
    assert status == 200, answer
    return answer


async def wait_status(
    client: Client, session_id: str, want: str, within: float = 5.0
) -> dict[str, Any]:
    """Poll the session's status until it is ``want``; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        status, body = await call(client, "GET", f"/api/sessions/{session_id}/status")
        assert status == 200, body
        if body["status"] == want:
            return body
        assert time.monotonic() < deadline, f"still {body['status']}, wanted {want}"
        await asyncio.sleep(0.01)


def test_status_is_a_function_of_the_clock() -> None:
    fresh = Session("s", 1, None, created_at=100.0)
    restored = Session("r", 1, None, created_at=100.0, restored=True)
    assert status_at(fresh, 5.0, 104.9) == "qr_scanning"
    assert status_at(restored, 5.0, 104.9) == "authenticated"
    assert status_at(fresh, 5.0, 105.0) == status_at(restored, 5.0, 105.0) == "connected"
    assert status_at(fresh, 0.0, 100.0) == "connected"
    assert fake_phone("s") == fake_phone("s") != fake_phone("t")


async def test_api_key_is_checked_in_query_for_get_and_body_otherwise(sim: MakeSim) -> None:
    client = await sim(api_key=KEY)
    invalid = {"error": "Invalid API key"}
    assert await call(client, "GET", "/api/sessions") == (401, invalid)
    assert await call(client, "GET", "/api/sessions", params={"api_key": "wrong"}) == (401, invalid)
    # A GET's key belongs in the query; one in a body does not count.
    assert await call(client, "GET", "/api/sessions", json={"api_key": KEY}) == (401, invalid)
    status, _ = await call(client, "GET", "/api/sessions", params={"api_key": KEY})
    assert status == 200

    body = {"session_id": "s1"}
    assert await call(client, "POST", "/api/sessions", json=body) == (401, invalid)
    assert await call(client, "POST", "/api/sessions", json=body, params={"api_key": KEY}) == (
        401,
        invalid,
    )
    status, answer = await call(client, "POST", "/api/sessions", json={**body, "api_key": KEY})
    assert (status, answer["success"]) == (200, True)
    status, _ = await call(client, "DELETE", "/api/sessions/s1", json={"api_key": KEY})
    assert status == 200

    for path in ("/health", "/health/detailed", "/health/ready", "/health/live", "/info", "/"):
        status, _ = await call(client, "GET", path)
        assert status == 200, path


async def test_new_session_scans_qr_then_connects_after_the_delay(sim: MakeSim) -> None:
    client = await sim(connect_delay=0.05)
    answer = await create(client, "s1", workspace_id=7, account_id=3, priority="high")
    assert answer["success"] is True
    assert answer["status"] == "qr_scanning"
    assert answer["qr_code"]

    body = await wait_status(client, "s1", "connected")
    assert body["phone_number"] == fake_phone("s1")
    assert body["workspace_id"] == 7
    assert body["connected_at"].endswith("Z")
    assert body["messages_sent"] == 0

    again = await create(client, "s1")
    assert again == {"success": True, "session_id": "s1", "status": "connected", "existing": True}


async def test_zero_connect_delay_connects_at_once(sim: MakeSim) -> None:
    client = await sim(connect_delay=0)
    assert (await create(client, "s1"))["status"] == "connected"


async def test_list_and_health_count_sessions(sim: MakeSim) -> None:
    client = await sim()
    await create(client, "a", workspace_id=1)
    await create(client, "b", workspace_id=2)
    client.server.app[SESSIONS]["a"].created_at -= 120  # paired long ago

    status, listing = await call(client, "GET", "/api/sessions")
    assert status == 200
    assert listing["success"] is True
    assert listing["total"] == 2
    by_id = {s["session_id"]: s for s in listing["sessions"]}
    assert set(by_id["a"]) == {
        "session_id",
        "workspace_id",
        "status",
        "phone_number",
        "connected_at",
    }
    assert (by_id["a"]["status"], by_id["a"]["phone_number"]) == ("connected", fake_phone("a"))
    assert (by_id["b"]["status"], by_id["b"]["phone_number"]) == ("qr_scanning", None)

    status, health = await call(client, "GET", "/health")
    assert status == 200
    assert health["status"] == "healthy"
    assert health["sessions"] == {"total": 2, "connected": 1, "disconnected": 1}
    assert set(health) == {"status", "uptime", "sessions", "memory", "timestamp"}


async def test_routes_naming_an_unknown_session_answer_404(sim: MakeSim) -> None:
    client = await sim()
    not_found = (404, {"error": "Session not found"})
    for method, path in [
        ("GET", "/api/sessions/nope/status"),
        ("GET", "/api/sessions/nope/metadata"),
        ("PUT", "/api/sessions/nope/metadata"),
        ("POST", "/api/sessions/nope/reconnect"),
        ("POST", "/api/sessions/nope/regenerate-qr"),
        ("GET", "/api/messages/nope/status?message_id=m1"),
        ("GET", "/api/messages/nope/validate"),
        ("GET", "/api/internal/sessions/nope/last-activity"),
    ]:
        assert await call(client, method, path, json={}) == not_found, path
    send = {"session_id": "nope", "recipient_phone": "628111", "message": "hi"}
    for path in ("send", "send-media", "bulk-send", "send-template"):
        assert await call(client, "POST", f"/api/messages/{path}", json=send) == not_found, path


async def test_send_to_a_session_not_connected_answers_400(sim: MakeSim) -> None:
    client = await sim()
    await create(client, "s1")
    send = {"session_id": "s1", "recipient_phone": "628111", "message": "hi", "type": "text"}
    assert await call(client, "POST", "/api/messages/send", json=send) == (
        400,
        {"error": "Session not connected. Current status: qr_scanning"},
    )
    status, body = await call(client, "GET", "/api/messages/s1/validate")
    assert (status, body["can_send"]) == (200, False)
    assert (await wait_status(client, "s1", "qr_scanning"))["messages_sent"] == 0


async def test_sends_are_answered_and_counted(sim: MakeSim) -> None:
    client = await sim(connect_delay=0)
    await create(client, "s1")
    base = {"session_id": "s1", "recipient_phone": "628111"}
    ids = []
    for path, extra in [
        ("send", {"message": "hi", "type": "text"}),
        ("send-media", {"media_url": "http://x/y.png", "caption": "c", "filename": "y.png"}),
        ("send-template", {"template": "welcome"}),
    ]:
        status, body = await call(client, "POST", f"/api/messages/{path}", json={**base, **extra})
        assert (status, body["success"]) == (200, True), body
        assert abs(body["timestamp"] - time.time() * 1000) < 60_000
        ids.append(body["message_id"])

    bulk = {"session_id": "s1", "recipients": ["6281", "6282", "6283"], "message": "hi"}
    status, body = await call(client, "POST", "/api/messages/bulk-send", json=bulk)
    assert status == 200
    assert [r["recipient"] for r in body["results"]] == bulk["recipients"]
    ids += [r["message_id"] for r in body["results"]]
    assert len(set(ids)) == 6

    assert (await wait_status(client, "s1", "connected"))["messages_sent"] == 6
    status, body = await call(
        client, "GET", "/api/messages/s1/status", params={"message_id": ids[0]}
    )
    assert (status, body["message_id"]) == (200, ids[0])


async def test_bodies_over_aiohttps_default_1_mb_are_accepted(sim: MakeSim) -> None:
    client = await sim(connect_delay=0)
    await create(client, "s1")
    send = {"session_id": "s1", "recipient_phone": "628111", "message": "x" * 5 * 1024**2}
    status, body = await call(client, "POST", "/api/messages/send", json=send)
    assert (status, body["success"]) == (200, True)


async def test_delete_then_delete_again_is_already_disconnected(sim: MakeSim) -> None:
    client = await sim()
    await create(client, "s1")
    status, body = await call(client, "DELETE", "/api/sessions/s1", json={})
    assert (status, body["success"]) == (200, True)
    assert "alreadyDisconnected" not in body
    status, body = await call(client, "DELETE", "/api/sessions/s1", json={})
    assert (status, body["success"], body["alreadyDisconnected"]) == (200, True, True)
    assert await call(client, "GET", "/api/sessions/s1/status") == (
        404,
        {"error": "Session not found"},
    )


async def test_restore_reconnect_and_metadata(sim: MakeSim) -> None:
    client = await sim()
    status, body = await call(client, "POST", "/api/sessions/r1/restore", json={"workspace_id": 4})
    assert (status, body["success"], body["status"], body["restored"]) == (
        200,
        True,
        "authenticated",
        True,
    )
    assert (await wait_status(client, "r1", "authenticated"))["workspace_id"] == 4
    status, body = await call(client, "POST", "/api/sessions/r1/restore", json={})
    assert (status, body["restored"]) == (200, False)

    status, body = await call(client, "POST", "/api/sessions/r1/reconnect", json={})
    assert (status, body["status"]) == (200, "qr_scanning")
    status, body = await call(client, "POST", "/api/sessions/r1/regenerate-qr", json={})
    assert (status, bool(body["qr_code"])) == (200, True)

    put = {"metadata": {"label": "sales"}}
    assert await call(client, "PUT", "/api/sessions/r1/metadata", json=put) == (
        200,
        {"success": True, "session_id": "r1", "metadata": {"label": "sales"}},
    )
    status, body = await call(client, "GET", "/api/sessions/r1/metadata")
    assert body["metadata"] == {"label": "sales"}
    status, body = await call(client, "GET", "/api/internal/sessions/r1/last-activity")
    assert (status, body["last_activity"].endswith("Z")) == (200, True)


async def test_error_rate_one_fails_every_api_call_but_not_health(sim: MakeSim) -> None:
    client = await sim(error_rate=1.0)
    failure = (500, {"error": "Simulated failure"})
    assert await call(client, "GET", "/api/sessions") == failure
    assert await call(client, "POST", "/api/sessions", json={"session_id": "s1"}) == failure
    status, body = await call(client, "GET", "/health")
    assert (status, body["status"]) == (200, "healthy")


async def test_missing_session_id_and_bad_json_answer_400(sim: MakeSim) -> None:
    client = await sim()
    assert await call(client, "POST", "/api/sessions", json={"workspace_id": 1}) == (
        400,
        {"error": "session_id is required"},
    )
    headers = {"Content-Type": "application/json"}
    status, body = await call(client, "POST", "/api/sessions", data=b"{not json", headers=headers)
    assert status == 400
    assert "error" in body


async def test_unknown_paths_answer_404_endpoint_not_found(sim: MakeSim) -> None:
    client = await sim(api_key=KEY)
    assert await call(client, "GET", "/api/nothing") == (
        404,
        {"error": "Endpoint not found", "path": "/api/nothing"},
    )
    status, body = await call(client, "PATCH", "/api/sessions")
    assert (status, body["error"]) == (404, "Endpoint not found")


async def test_runs_as_a_module_and_stops_on_sigterm() -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dev.simulator",
        "--port",
        str(port),
        cwd=ROOT,
        env={**os.environ, "LARAVEL_API_TOKEN": KEY},
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        async with aiohttp.ClientSession() as http:
            while True:
                try:
                    async with http.get(f"{url}/health") as resp:
                        assert resp.status == 200
                        break
                except aiohttp.ClientConnectionError:
                    assert proc.returncode is None, "simulator exited early"
                    assert time.monotonic() < deadline, "simulator did not answer within 10 s"
                    await asyncio.sleep(0.05)
            async with http.get(f"{url}/api/sessions") as resp:
                assert resp.status == 401  # the key came from LARAVEL_API_TOKEN
            async with http.get(f"{url}/api/sessions", params={"api_key": KEY}) as resp:
                assert resp.status == 200
    finally:
        if proc.returncode is None:
            proc.terminate()
        _, stderr = await asyncio.wait_for(proc.communicate(), timeout=10)
    assert proc.returncode in (0, -signal.SIGTERM), stderr.decode()
    assert b"INFO" in stderr
    assert b"Traceback" not in stderr


async def test_events_are_reported_signed_in_order_as_the_instances_do(
    simulators: Any, http: aiohttp.ClientSession
) -> None:
    backend = Backend("hmac", free_port())
    await backend.start()
    try:
        [instance] = await simulators(
            1, api_key=KEY, connect_delay=0.05, laravel_url=backend.url, hmac_secret="hmac"
        )
        url, key = instance.url, {"api_key": KEY}
        await http.post(f"{url}/api/sessions", json={"session_id": "s-1", "workspace_id": 7, **key})

        async def seen(*events: str) -> bool:
            return tuple(d.event for d in backend.received) == events

        await eventually(lambda: seen("qr_code_generated", "session_ready"))
        send = {"session_id": "s-1", "recipient_phone": "628123", "message": "hi", **key}
        await http.post(f"{url}/api/messages/send", json=send)
        await http.delete(f"{url}/api/sessions/s-1", json=key)
        await http.post(f"{url}/api/sessions/s-2/restore", json=key)
        await eventually(
            lambda: seen(
                "qr_code_generated",
                "session_ready",
                "message_sent",
                "session_disconnected",
                "session_authenticated",
                "session_ready",
            )
        )
        first, ready, sent, *_ = backend.received
        assert all(d.signed and d.instance == url for d in backend.received)
        assert {d.path for d in backend.received} == {WEBHOOK_PATH}
        assert first.payload["data"]["workspace_id"] == 7
        assert ready.payload["data"] == {
            "session_id": "s-1",
            "workspace_id": 7,
            "status": "connected",
            "phone_number": fake_phone("s-1"),
        }
        assert sent.payload["data"]["recipient_phone"] == "628123"
    finally:
        await backend.stop()


def test_reporting_events_needs_the_secret() -> None:
    with pytest.raises(ValueError, match="HMAC_SECRET"):
        SimulatorConfig(laravel_url="http://127.0.0.1:8000")


async def test_with_restore_it_restores_what_the_backend_lists_as_active_at_start_up(
    simulators: Any, teardown: Any
) -> None:
    """As the instances' AccountRestoration: ``GET /api/whatsapp/accounts/active`` with the
    key in ``X-API-Key``; each listed session comes back authenticated, then connected."""
    asked: list[dict[str, str]] = []

    async def active(request: web.Request) -> web.Response:
        asked.append(dict(request.headers))
        listed = [{"id": 4, "session_id": "r-1", "workspace_id": 3}, {"session_id": 5}, "junk"]
        return web.json_response({"success": True, "sessions": listed})

    backend = Backend("hmac", free_port())
    backend_app = web.Application()
    backend_app.router.add_get("/api/whatsapp/accounts/active", active)
    backend_app.router.add_post(WEBHOOK_PATH, backend._handle)
    runner, url = await serve(backend_app)
    teardown.push_async_callback(runner.cleanup)
    fields = {"api_key": KEY, "connect_delay": 0.05, "laravel_url": url, "hmac_secret": "hmac"}
    [instance] = await simulators(1, **fields, restore_on_start=True)

    async def ready() -> bool:
        return [d.event for d in backend.received] == ["session_authenticated", "session_ready"]

    await eventually(ready)
    assert list(instance.sessions) == ["r-1"]  # the entries that are no session are passed over
    restored = instance.sessions["r-1"]
    assert (restored.workspace_id, restored.account_id, restored.restored) == (3, 4, True)
    [headers] = asked
    assert headers["X-API-Key"] == KEY and headers["User-Agent"] == USER_AGENT
    # Without the flag, or when the backend does not answer, nothing is restored.
    [plain] = await simulators(1, **fields)
    [unanswered] = await simulators(
        1, **{**fields, "laravel_url": f"http://127.0.0.1:{free_port()}"}, restore_on_start=True
    )
    assert len(asked) == 1 and not plain.sessions and not unanswered.sessions
