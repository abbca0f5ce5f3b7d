"""The admin API and its shell commands, against real gateways, simulators and Redis."""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Any

import aiohttp

from dev.ports import free_port
from tests.harness import API_KEY, RunningGateway, eventually, gateway_command, sample
from tests.support import raw_http

TOKEN = "admin-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


async def admin(
    http: aiohttp.ClientSession, gw: RunningGateway, method: str, path: str, **kwargs: Any
) -> tuple[int, Any]:
    """One admin call with the right token: status and JSON body."""
    headers = {**AUTH, **kwargs.pop("headers", {})}
    async with http.request(method, f"{gw.url}{path}", headers=headers, **kwargs) as resp:
        return resp.status, await resp.json()


async def create(http: aiohttp.ClientSession, gw: RunningGateway, sid: str, **fields: Any) -> str:
    """Create a session through the gateway; the instance it landed on."""
    body = {"session_id": sid, "api_key": API_KEY, **fields}
    async with http.post(f"{gw.url}/api/sessions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-WhatsApp-Instance"]


async def status_via(http: aiohttp.ClientSession, gw: RunningGateway, sid: str) -> str:
    """Ask the gateway for a session's status; the instance that answered."""
    async with http.get(f"{gw.url}/api/sessions/{sid}/status?api_key={API_KEY}") as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-WhatsApp-Instance"]


async def create_directly(
    http: aiohttp.ClientSession, instance: str, sid: str, **fields: Any
) -> None:
    """A session appearing on an instance without the gateway (a restart, a manual move)."""
    body = {"session_id": sid, "api_key": API_KEY, **fields}
    async with http.post(f"{instance}/api/sessions", json=body) as resp:
        assert resp.status == 200, await resp.text()


async def delete_directly(http: aiohttp.ClientSession, instance: str, sid: str) -> None:
    async with http.delete(f"{instance}/api/sessions/{sid}", json={"api_key": API_KEY}) as resp:
        assert resp.status == 200, await resp.text()


async def move_directly(http: aiohttp.ClientSession, sid: str, source: str, target: str) -> None:
    await create_directly(http, target, sid)
    await delete_directly(http, source, sid)


# --- authentication --------------------------------------------------------------------


async def test_the_admin_api_is_off_without_a_token(simulators, gateways, http):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    async with http.get(f"{gw.url}/gateway/instances", headers=AUTH) as resp:
        assert resp.status == 404
        assert "X-WhatsApp-Instance" not in resp.headers  # answered here, not forwarded
        body = await resp.json()
    assert body["success"] is False and "off" in body["error"]
    labels = {"route": "/gateway/instances", "method": "GET", "status": "404", "upstream": "none"}
    assert sample(gw, "gateway_requests_total", **labels) == 1


async def test_a_missing_or_wrong_token_is_refused(simulators, gateways, http, caplog):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], admin_token=TOKEN)
    for headers in (
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": f"Bearer {TOKEN}x"},
    ):
        async with http.post(f"{gw.url}/gateway/instances/0/drain", headers=headers) as resp:
            assert resp.status == 401, headers
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            assert (await resp.json())["success"] is False
    # bytes that are not UTF-8, or not ASCII, in the header: refused the same, quietly
    caplog.set_level(logging.INFO)
    for value in ("Bearer \xff", f"Bearer {TOKEN}\xff", "Bearer \xc3\xa9", "\xff"):
        reply = await raw_http(
            gw.url, "/gateway/instances/0/drain", "POST", {"Authorization": value}
        )
        assert reply.status == 401, value
        assert reply.json()["success"] is False
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert gw.gw.pins.draining == set()


# --- each call -------------------------------------------------------------------------


async def test_instances_show_health_counts_and_errors(simulators, gateways, http):
    sims = await simulators(2)
    dead = f"http://127.0.0.1:{free_port()}"
    gw = await gateways([sims[0].url, sims[1].url, dead], admin_token=TOKEN)
    await create(http, gw, "i-1")
    status, body = await admin(http, gw, "GET", "/gateway/instances")
    assert status == 200
    rows = body["instances"]
    assert [(r["index"], r["url"], r["up"]) for r in rows] == [
        (0, sims[0].url, True),
        (1, sims[1].url, True),
        (2, dead, False),
    ]
    assert [r["active"] for r in rows] == [1, 0, 0]
    assert rows[0]["last_error"] is None and rows[2]["last_error"] == "refused"
    assert not any(r["draining"] for r in rows)
    assert all(datetime.fromisoformat(r["last_check"]) for r in rows)


async def test_distribution_counts_sessions_and_says_whether_balanced(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    for i in range(4):
        await create(http, gw, f"d-{i}")
    status, body = await admin(http, gw, "GET", "/gateway/distribution")
    assert status == 200
    assert [(r["url"], r["sessions"], r["pinned"]) for r in body["instances"]] == [
        (sims[0].url, 2, 2),
        (sims[1].url, 2, 2),
    ]
    assert body["total"] == 4 and body["pinned"] == 4 and body["balanced"] is True
    assert (body["mean"], body["spread"], body["balance_limit"]) == (2, 0, 0.2)
    assert body["next"] == {"index": 0, "url": sims[0].url}  # a tie: the first configured
    await admin(http, gw, "POST", "/gateway/instances/1/drain")
    for i in range(4, 6):
        await create(http, gw, f"d-{i}")
    _, body = await admin(http, gw, "GET", "/gateway/distribution")
    assert [r["sessions"] for r in body["instances"]] == [4, 2]
    assert [r["against_mean"] for r in body["instances"]] == [0.3333, -0.3333]
    assert [r["new_sessions"] for r in body["instances"]] == ["yes", "draining"]
    assert body["balanced"] is False and body["spread"] == 0.6667
    assert body["next"] == {"index": 0, "url": sims[0].url}  # the draining one never


async def test_a_pin_moved_by_hand_routes_there(simulators, gateways, http, redis_client):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    source = await create(http, gw, "m-1")
    target = next(s.url for s in sims if s.url != source)
    status, body = await admin(http, gw, "GET", "/gateway/sessions/m-1")
    assert status == 200 and body["instance"] == source and body["index"] is not None
    await move_directly(http, "m-1", source, target)  # an operator moves it...
    status, body = await admin(
        http, gw, "PUT", "/gateway/sessions/m-1", json={"instance": target + "/"}
    )  # ...and tells the gateway
    assert status == 200
    assert (body["instance"], body["previous"]) == (target, source)
    assert await redis_client.hget(gw.gw.pins.keys.sessions, "m-1") == target
    assert await status_via(http, gw, "m-1") == target
    assert sample(gw, "gateway_rediscoveries_total", result="found") is None


async def test_bad_admin_input_gets_a_clear_json_4xx(simulators, gateways, http, caplog):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    await create(http, gw, "b-1")
    cases: list[tuple[str, str, dict[str, Any], int]] = [
        ("GET", "/gateway/sessions/bad%20id", {}, 400),
        ("GET", "/gateway/sessions/unknown", {}, 404),
        ("PUT", "/gateway/sessions/b-1", {"data": b"not json"}, 400),
        ("PUT", "/gateway/sessions/b-1", {"json": ["a list"]}, 400),
        ("PUT", "/gateway/sessions/b-1", {"json": {"instance": "http://elsewhere:1"}}, 400),
        ("PUT", "/gateway/sessions/bad%20id", {"json": {"instance": sims[0].url}}, 400),
        ("POST", "/gateway/instances/x/drain", {}, 400),
        ("POST", "/gateway/instances/2/drain", {}, 404),
        ("POST", "/gateway/instances/-1/undrain", {}, 400),
        ("POST", "/gateway/instances/%C2%B2/drain", {}, 400),  # "²": a digit, not a number
        ("POST", "/gateway/instances/%D9%A3/drain", {}, 400),  # "٣"
        ("POST", "/gateway/instances/" + "9" * 5000 + "/drain", {}, 404),
        ("GET", "/gateway/reconcile", {}, 404),
        ("GET", "/gateway/nothing-here", {}, 404),
    ]
    for method, path, kwargs, expected in cases:
        status, body = await admin(http, gw, method, path, **kwargs)
        assert (status, body["success"]) == (expected, False), (method, path, body)
        assert body["error"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert gw.gw.pins.sessions["b-1"] in (sims[0].url, sims[1].url)
    assert gw.gw.pins.draining == set()


# --- draining --------------------------------------------------------------------------


async def scrape(http: aiohttp.ClientSession, gw: RunningGateway) -> str:
    async with http.get(f"{gw.url}/metrics") as r:
        return await r.text()


async def test_a_drained_instance_keeps_its_sessions_and_gets_no_new_ones(
    simulators, gateways, http
):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    assert await create(http, gw, "dr-0") == sims[0].url
    status, body = await admin(http, gw, "POST", "/gateway/instances/0/drain")
    assert status == 200
    assert (body["index"], body["url"], body["draining"]) == (0, sims[0].url, True)
    for i in range(1, 4):
        assert await create(http, gw, f"dr-{i}") == sims[1].url
    assert await status_via(http, gw, "dr-0") == sims[0].url
    _, body = await admin(http, gw, "GET", "/gateway/instances")
    assert [r["draining"] for r in body["instances"]] == [True, False]
    assert f'gateway_instance_draining{{upstream="{sims[0].url}"}} 1.0' in await scrape(http, gw)

    status, body = await admin(http, gw, "POST", "/gateway/instances/0/undrain")
    assert status == 200 and body["draining"] is False
    assert await create(http, gw, "dr-4") == sims[0].url  # the least loaded again
    assert f'gateway_instance_draining{{upstream="{sims[0].url}"}} 0.0' in await scrape(http, gw)


async def test_a_drain_through_one_gateway_is_seen_by_another(simulators, gateways, http):
    sims = await simulators(2)
    urls = [s.url for s in sims]
    first = await gateways(urls, admin_token=TOKEN)
    second = await gateways(urls, admin_token=TOKEN)
    await admin(http, first, "POST", "/gateway/instances/0/drain")

    async def second_sees_it() -> bool:
        _, body = await admin(http, second, "GET", "/gateway/instances")
        return body["instances"][0]["draining"]

    await eventually(second_sees_it)
    assert await create(http, second, "two-1") == sims[1].url
    await admin(http, second, "POST", "/gateway/instances/0/undrain")

    async def first_sees_the_undrain() -> bool:
        return not first.gw.pins.draining

    await eventually(first_sees_the_undrain)
    assert await create(http, first, "two-2") == sims[0].url


# --- shell commands --------------------------------------------------------------------


async def cli(gw: RunningGateway | None, *args: str, token: str = TOKEN) -> tuple[int, str, str]:
    """``python -m gateway ARGS`` as a real process, pointed at ``gw`` (None: nothing there)."""
    port = gw.gw.settings.port if gw is not None else free_port()
    env = {"GATEWAY_HOST": "127.0.0.1", "GATEWAY_PORT": str(port), "GATEWAY_ADMIN_TOKEN": token}
    return await gateway_command(*args, env=env)


async def test_shell_commands_print_tables(simulators, gateways, http):
    sims = await simulators(2)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    for i in range(2):
        await create(http, gw, f"c-{i}")

    rc, out, _ = await cli(gw, "instances")
    assert rc == 0
    header, *rows = out.splitlines()
    assert " ".join(header.split()) == "# instance up draining active last check last error"
    assert [r.split()[:5] for r in rows] == [
        ["0", sims[0].url, "yes", "no", "1"],
        ["1", sims[1].url, "yes", "no", "1"],
    ]
    assert len({header.index("up"), *(r.index("yes") for r in rows)}) == 1  # aligned

    rc, out, _ = await cli(gw, "distribution")
    assert rc == 0 and ", balanced (the rule: under 20 %)" in out
    assert out.splitlines()[3].split() == ["total", "2", "2"]

    rc, out, _ = await cli(gw, "drain", "1")
    assert rc == 0 and "draining" in out and sims[1].url in out
    assert gw.gw.pins.draining == {sims[1].url}
    rc, out, _ = await cli(gw, "undrain", "1")
    assert rc == 0 and "takes new sessions again" in out
    assert gw.gw.pins.draining == set()

    await move_directly(http, "c-0", sims[0].url, sims[1].url)
    rc, out, _ = await cli(gw, "reconcile")
    assert rc == 0
    assert out.splitlines()[1].split() == ["moved", "c-0", sims[0].url, sims[1].url]
    rc, out, _ = await cli(gw, "reconcile")
    assert (rc, out.strip()) == (0, "no corrections: every pin was right")


async def test_distribution_prints_the_spread_against_the_mean_and_the_next_placement(
    simulators, gateways, http
):
    sims = await simulators(3)
    gw = await gateways([s.url for s in sims], admin_token=TOKEN)
    for i in range(3):
        await create(http, gw, f"s-{i}")
    await admin(http, gw, "POST", "/gateway/instances/2/drain")
    for i in range(3, 5):
        await create(http, gw, f"s-{i}")  # [2, 2, 1]: the drained one keeps its 1

    rc, out, _ = await cli(gw, "distribution")
    assert rc == 0, out
    header, *rows, total, spread, following = out.splitlines()
    assert " ".join(header.split()) == "# instance active vs mean new sessions pinned"
    assert [r.split() for r in rows] == [
        ["0", sims[0].url, "2", "+20", "%", "yes", "2"],
        ["1", sims[1].url, "2", "+20", "%", "yes", "2"],
        ["2", sims[2].url, "1", "-40", "%", "draining", "1"],
    ]
    assert total.split() == ["total", "5", "5"]
    assert spread == (
        "mean: 1.7 active per instance; spread (max - min) / mean: 60 %, not balanced"
        " (the rule: under 20 %)"
    )
    assert following == (
        f"next session goes to: 0 {sims[0].url} (the fewest active sessions of those taking"
        " new ones)"
    )

    await admin(http, gw, "POST", "/gateway/instances/2/undrain")
    rc, out, _ = await cli(gw, "distribution")
    assert out.splitlines()[-1].startswith(f"next session goes to: 2 {sims[2].url} ")
    assert await create(http, gw, "s-5") == sims[2].url  # where it said

    for index in range(3):
        await admin(http, gw, "POST", f"/gateway/instances/{index}/drain")
    rc, out, _ = await cli(gw, "distribution")
    assert out.splitlines()[-1] == (
        "next session: none can take it (every instance is down, draining or full)"
    )
    assert ", balanced (the rule: under 20 %)" in out  # [2, 2, 2]


async def test_shell_commands_fail_with_one_clear_line(simulators, gateways):
    sims = await simulators(1)
    gw = await gateways([sims[0].url], admin_token=TOKEN)
    for target, args, token, expected in (
        (None, ("instances",), TOKEN, "gateway not reachable at http://127.0.0.1:"),
        (gw, ("instances",), "wrong", "401 Missing or wrong admin token"),
        (gw, ("drain", "5"), TOKEN, "404 No instance 5"),
        (gw, ("reconcile",), "", "no admin token configured"),
    ):
        rc, out, err = await cli(target, *args, token=token)
        assert rc == 1, (args, out, err)
        assert len(err.strip().splitlines()) == 1 and expected in err, err


async def test_the_command_line_help_is_plain_text():
    from tests.harness import gateway_command

    status, out, _ = await gateway_command("--help", env={})
    assert status == 0 and "administer a running gateway" in out
    assert "``" not in out and ":func:" not in out
