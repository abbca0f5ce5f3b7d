"""``make bench-gateway``: the gateway's cost, as ratios against peers in one run.

Four simulators, then the same load (GET status and POST send for pinned sessions, from a
fixed number of concurrent clients) three ways: straight to the instances (the floor), through
a bare aiohttp pass-through proxy that knows the instance in advance (the cost of any aiohttp
hop), and through the gateway. Every server is a subprocess of this one; Redis is the one in
``REDIS_URL`` (a bench prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis

KEY = "bench-key"

PASSTHROUGH = """
import sys
from aiohttp import ClientSession, TCPConnector, web
import uvloop

async def main(port, target):
    session = ClientSession(target, connector=TCPConnector(limit=0), auto_decompress=False)
    async def forward(request):
        async with session.request(request.method, request.raw_path, data=await request.read(),
                                   headers={"Content-Type": request.content_type}) as r:
            return web.Response(status=r.status, body=await r.read(),
                                content_type=r.content_type)
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await __import__("asyncio").Event().wait()

uvloop.run(main(int(sys.argv[1]), sys.argv[2]))
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


ROOT = Path(__file__).resolve().parents[2]


def spawn(argv: Sequence[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, *argv],
        cwd=ROOT,  # the simulator is in ``dev``, importable from the repository root
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_up(http: aiohttp.ClientSession, url: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        try:
            async with http.get(f"{url}/health") as r:
                if r.status == 200:
                    return
        except aiohttp.ClientError:
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not start")
        await asyncio.sleep(0.05)


async def load(
    http: aiohttp.ClientSession,
    bases: Sequence[str],
    sessions: Sequence[str],
    total: int,
    clients: int,
) -> float:
    """Requests per second for ``total`` requests from ``clients`` concurrent loops."""
    remaining = total

    async def client(n: int) -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            sid = sessions[remaining % len(sessions)]
            base = bases[remaining % len(bases)]
            if remaining % 2:
                url = f"{base}/api/sessions/{sid}/status?api_key={KEY}"
                async with http.get(url) as r:
                    await r.read()
            else:
                body = {"session_id": sid, "api_key": KEY, "recipient_phone": "1", "message": "m"}
                async with http.post(f"{base}/api/messages/send", json=body) as r:
                    await r.read()
            if r.status != 200:
                raise SystemExit(f"unexpected {r.status} from {base}")

    started = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return total / (time.perf_counter() - started)


async def run(total: int, clients: int) -> None:
    sim_ports = [free_port() for _ in range(4)]
    sims = [f"http://127.0.0.1:{p}" for p in sim_ports]
    gw_port, pass_port = free_port(), free_port()
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    procs = [
        spawn(["-m", "dev.simulator", "--port", str(p), "--api-key", KEY, "--connect-delay", "0"])
        for p in sim_ports
    ]
    procs.append(
        spawn(
            ["-m", "gateway"],
            env={
                "GATEWAY_PORT": str(gw_port),
                "WHATSAPP_INSTANCES": ",".join(sims),
                "REDIS_URL": redis_url,
                "REDIS_PREFIX": prefix,
                "LARAVEL_API_TOKEN": KEY,
                "GATEWAY_LOG_LEVEL": "WARNING",
            },
        )
    )
    procs.append(spawn(["-c", PASSTHROUGH, str(pass_port), sims[0]]))
    gateway, passthrough = f"http://127.0.0.1:{gw_port}", f"http://127.0.0.1:{pass_port}"
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as http:
            for url in (*sims, gateway, passthrough):
                await wait_up(http, url)
            sessions = [f"bench-{i}" for i in range(64)]
            for sid in sessions:
                async with http.post(
                    f"{gateway}/api/sessions", json={"session_id": sid, "api_key": KEY}
                ) as r:
                    assert r.status == 200, await r.text()
            on_first = [s for s in sessions if s in await _held(http, sims[0])]
            await load(http, [gateway], sessions, total // 10, clients)  # warm-up
            rates = {
                "direct to the instance": await load(http, [sims[0]], on_first, total, clients),
                "bare aiohttp pass-through": await load(
                    http, [passthrough], on_first, total, clients
                ),
                "gateway": await load(http, [gateway], on_first, total, clients),
            }
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()
        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    gw_rate = rates["gateway"]
    print(f"{total} requests (status + send, half each), {clients} concurrent clients")
    for name, rate in rates.items():
        print(f"  {name:<28} {rate:9.0f} req/s   gateway/this = {gw_rate / rate:5.2f}")


async def _held(http: aiohttp.ClientSession, instance: str) -> set[str]:
    async with http.get(f"{instance}/api/sessions?api_key={KEY}") as r:
        return {s["session_id"] for s in (await r.json())["sessions"]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.gateway", description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--clients", type=int, default=64)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.clients))


if __name__ == "__main__":
    main()
