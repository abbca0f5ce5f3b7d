"""Live reload: SIGHUP to ``python -m gateway --processes 2`` while requests flow.

The instances and timeouts live in the Laravel ``.env`` named by ``LARAVEL_ENV_FILE``, as in
production; the test rewrites it and sends SIGHUP to the parent, as ``supervisorctl signal
HUP`` and ``systemctl reload`` do.
"""

from __future__ import annotations

import asyncio
import signal
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dev.ports import free_port
from tests.harness import API_KEY, REDIS_URL, Sim, wait_healthy
from tests.spawned import Spawned, children_pids, clean_env

pytestmark = pytest.mark.timeout(90)


@dataclass
class Reloadable:
    run: Spawned
    url: str
    dotenv: Path

    def write(self, instances: list[Sim], **settings: str) -> None:
        """The Laravel .env: these instances and settings, on the gateway's own port."""
        settings = {"GATEWAY_PORT": self.url.rsplit(":", 1)[1], **settings}
        lines = [f"WHATSAPP_INSTANCES={','.join(s.url for s in instances)}"]
        lines += [f"{name}={value}" for name, value in settings.items()]
        self.dotenv.write_text("\n".join(lines) + "\n")

    def reloaded(self) -> list[dict[str, Any]]:
        return [r for r in self.run.records() if r["message"].startswith("reloaded")]

    def refused(self) -> list[dict[str, Any]]:
        return [r for r in self.run.records() if r["message"].startswith("reload refused")]


@pytest.fixture
async def reloadable(
    tmp_path: Path, redis_prefix: str
) -> AsyncIterator[Callable[[list[Sim]], Awaitable[Reloadable]]]:
    runs: list[Spawned] = []

    async def start(instances: list[Sim]) -> Reloadable:
        port = free_port()
        env = clean_env(
            LARAVEL_ENV_FILE=str(tmp_path / "laravel.env"),
            REDIS_URL=REDIS_URL,
            REDIS_PREFIX=redis_prefix,
            LARAVEL_API_TOKEN=API_KEY,
            GATEWAY_HEALTH_INTERVAL="60",
            GATEWAY_RECONCILE_INTERVAL="60",
        )
        gateway = Reloadable(None, f"http://127.0.0.1:{port}", tmp_path / "laravel.env")  # type: ignore[arg-type]
        gateway.write(instances, GATEWAY_READ_TIMEOUT="5")
        gateway.run = await Spawned.start(
            "gateway", "--log-format", "json", "--processes", "2", env=env
        )
        runs.append(gateway.run)
        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, gateway.url, timeout=30)
        await gateway.run.logged(lambda _: bool(children_pids(gateway.run)), timeout=30)
        return gateway

    yield start
    for run in runs:
        await run.stop()


async def create(http: aiohttp.ClientSession, url: str, sid: str) -> str:
    body = {"session_id": sid, "api_key": API_KEY}
    async with http.post(f"{url}/api/sessions", json=body) as resp:
        assert resp.status == 200, await resp.text()
        return resp.headers["X-WhatsApp-Instance"]


async def status(http: aiohttp.ClientSession, url: str, sid: str) -> tuple[int, str]:
    async with http.get(f"{url}/api/sessions/{sid}/status?api_key={API_KEY}") as resp:
        return resp.status, resp.headers.get("X-WhatsApp-Instance", "")


class Traffic:
    """Requests for the given sessions, back to back on several connections, counted."""

    def __init__(self, url: str, sessions: list[str]) -> None:
        self.url, self.sessions = url, sessions
        self.statuses: Counter[int | str] = Counter()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def __enter__(self) -> Traffic:
        self._tasks = [asyncio.create_task(self._loop(i)) for i in range(4)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()

    async def wait(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def _loop(self, offset: int) -> None:
        async with aiohttp.ClientSession() as http:
            n = offset
            while not self._stop.is_set():
                sid = self.sessions[n % len(self.sessions)]
                n += 1
                try:
                    self.statuses[(await status(http, self.url, sid))[0]] += 1
                except aiohttp.ClientError as exc:
                    self.statuses[type(exc).__name__] += 1


async def test_instances_and_timeouts_change_under_traffic_with_no_request_dropped(
    simulators: Callable[..., Awaitable[list[Sim]]],
    reloadable: Callable[[list[Sim]], Awaitable[Reloadable]],
    http: aiohttp.ClientSession,
) -> None:
    a, b, c, d = await simulators(4)
    (slow,) = await simulators(1, latency=0.6)
    gw = await reloadable([a, b, c, slow])
    owners = {sid: await create(http, gw.url, sid) for sid in (f"r-{i}" for i in range(12))}
    on = {sim.url: [s for s, o in owners.items() if o == sim.url] for sim in (a, b, c, slow)}
    assert all(len(v) == 3 for v in on.values()), on
    assert (await status(http, gw.url, on[slow.url][0]))[0] == 200  # 0.6 s < read_timeout 5

    with Traffic(gw.url, on[a.url] + on[b.url]) as traffic:
        await asyncio.sleep(0.3)  # the traffic is flowing before anything changes
        # Instance c is retired: its sessions were restored on d, which is added.
        for sid in on[c.url]:
            d.sessions[sid] = c.sessions.pop(sid)
        gw.write([a, b, d, slow], GATEWAY_READ_TIMEOUT="0.3")
        gw.run.signal(signal.SIGHUP)
        await gw.run.logged(lambda _: len(gw.reloaded()) == 2)  # both children
        await asyncio.sleep(0.3)  # and flowing after
        await traffic.wait()

    assert set(traffic.statuses) == {200}, traffic.statuses
    assert traffic.statuses[200] > 20
    for sid in on[c.url]:  # pinned to an instance no longer configured: found where it is
        assert await status(http, gw.url, sid) == (200, d.url)
    assert (await status(http, gw.url, on[slow.url][0]))[0] == 504  # the new read_timeout
    placed = {await create(http, gw.url, f"new-{i}") for i in range(3)}
    assert placed <= {a.url, b.url, d.url} and d.url in placed  # never c, which is gone
    assert c.sessions == {}
    async with http.get(f"{gw.url}/metrics") as resp:
        page = await resp.text()
    assert f'gateway_instance_up{{upstream="{d.url}"}} 1.0' in page
    assert f'gateway_instance_up{{upstream="{c.url}"}}' not in page
    assert gw.refused() == []


async def test_a_bad_configuration_is_refused_with_one_line_and_the_old_one_kept(
    simulators: Callable[..., Awaitable[list[Sim]]],
    reloadable: Callable[[list[Sim]], Awaitable[Reloadable]],
    http: aiohttp.ClientSession,
) -> None:
    a, b = await simulators(2)
    gw = await reloadable([a])
    owner = await create(http, gw.url, "keep-1")

    with Traffic(gw.url, ["keep-1"]) as traffic:
        gw.write([a, b], GATEWAY_PLACEMENT="nowhere")
        gw.run.signal(signal.SIGHUP)
        await gw.run.logged(lambda _: len(gw.refused()) == 1)
        gw.write([a, b], GATEWAY_PORT=str(free_port()))
        gw.run.signal(signal.SIGHUP)
        await gw.run.logged(lambda _: len(gw.refused()) == 2)
        await asyncio.sleep(0.3)
        await traffic.wait()

    first, second = gw.refused()
    assert "placement: 'nowhere' is not one of" in first["message"], first
    assert "port cannot change without a restart" in second["message"], second
    assert set(traffic.statuses) == {200}, traffic.statuses
    assert gw.reloaded() == []
    for i in range(3):  # still only a: b was never taken in
        assert await create(http, gw.url, f"only-a-{i}") == owner == a.url
