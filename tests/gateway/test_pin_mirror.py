"""The pin mirror (each process's memory of the pins) cannot die or go stale silently."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit

from tests.harness import API_KEY, REDIS_URL, eventually
from tests.support import ADMIN_TOKEN, metric, pin, pinned


class FreezableProxy:
    """A TCP relay to Redis whose subscriber connections can be frozen half-open.

    Frozen, a connection stays open but nothing crosses it either way: what a dead NAT
    entry or a peer that vanished without a FIN looks like. Connections opened later
    pass again.
    """

    def __init__(self) -> None:
        target = urlsplit(REDIS_URL)
        self.target = (target.hostname or "127.0.0.1", target.port or 6379)
        self.db = target.path
        self.frozen = False
        self.subscribers: list[asyncio.Event] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> FreezableProxy:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"redis://127.0.0.1:{port}{self.db}"
        return self

    def freeze_subscribers(self) -> None:
        for frozen in self.subscribers:
            frozen.set()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in self._tasks:
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        frozen = asyncio.Event()

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, sniff: bool) -> None:
            while data := await src.read(65536):
                if sniff and b"SUBSCRIBE" in data.upper() and frozen not in self.subscribers:
                    self.subscribers.append(frozen)
                if frozen.is_set():
                    await asyncio.Event().wait()  # half-open: hold everything forever
                dst.write(data)
                await dst.drain()

        tasks = [
            asyncio.create_task(pipe(reader, up_writer, True)),
            asyncio.create_task(pipe(up_reader, writer, False)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.gather(*tasks)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()
            up_writer.close()


async def create(http, gw: str, sid: str) -> str:  # type: ignore[no-untyped-def]
    async with http.post(f"{gw}/api/sessions", json={"session_id": sid, "api_key": API_KEY}) as r:
        assert r.status == 200, await r.text()
        return r.headers["X-WhatsApp-Instance"]


async def test_the_mirror_survives_events_it_cannot_read(
    simulators, gateways, http, redis_client, redis_prefix
):
    sims = await simulators(2)
    urls = [s.url for s in sims]
    first = await gateways(urls, admin_token=ADMIN_TOKEN)
    second = await gateways(urls, admin_token=ADMIN_TOKEN)
    owner = await create(http, first.url, "mirror-1")
    other = next(u for u in urls if u != owner)
    channel = f"{redis_prefix}wa-gateway:events"
    bad = [
        "not json",
        "[]",
        "42",
        '{"kind": "session"}',
        '{"origin": "elsewhere", "kind": "bogus", "id": "x", "url": "y"}',
        '{"origin": "elsewhere", "kind": "session", "id": 7, "url": []}',
    ]
    for event in bad:
        await redis_client.publish(channel, event)
    await pin(http, second.url, "mirror-1", other)  # a valid change after the bad ones

    async def followed() -> bool:
        return await pinned(http, first.url, "mirror-1") == other

    await eventually(followed, timeout=5)
    events = "gateway_pin_events_total"
    assert await metric(http, first.url, events, result="bad") == len(bad)
    assert await metric(http, first.url, "gateway_pin_mirror_up") == 1


async def test_a_half_open_subscriber_is_noticed_and_pins_come_from_redis(
    simulators, gateways, http, teardown
):
    proxy = await FreezableProxy().start()
    teardown.push_async_callback(proxy.close)
    sims = await simulators(2)
    urls = [s.url for s in sims]
    watched = await gateways(urls, redis_url=proxy.url, admin_token=ADMIN_TOKEN)
    writer = await gateways(urls, admin_token=ADMIN_TOKEN)
    owner = await create(http, watched.url, "mirror-2")
    other = next(u for u in urls if u != owner)

    async def subscribed() -> bool:
        return bool(proxy.subscribers)

    await eventually(subscribed, timeout=5)
    proxy.freeze_subscribers()
    await pin(http, writer.url, "mirror-2", other)

    async def follows() -> bool:
        return await pinned(http, watched.url, "mirror-2") == other

    await eventually(follows, timeout=8)

    async def mirror_back() -> bool:
        return await metric(http, watched.url, "gateway_pin_mirror_up") == 1

    await eventually(mirror_back, timeout=8)
    # and it follows changes again through its new subscription
    await pin(http, writer.url, "mirror-2", owner)

    async def follows_again() -> bool:
        return await pinned(http, watched.url, "mirror-2") == owner

    await eventually(follows_again, timeout=5)
