"""``make bench-webhooks``: the webhook route against the least a durable receiver can do.

Both receivers run as one process each, on the same core, in front of the same Redis:

- **the gateway** (``python -m gateway`` with ``HMAC_SECRET``): signature and timestamp
  check, dedup, the event into its session's lane in one Lua step, its pin, then ``200``;
- **the floor**: a bare aiohttp app (same uvloop) that checks the same signature, RPUSHes
  the body to one Redis list and answers ``200``: no dedup, no order per session, no pins.

A client on another core posts signed ``message_received`` events of 100 sessions (every
body distinct, so none is a repeat) at a fixed rate, then as fast as its connections go.
Latency is timed from the actual send; the receivers take turns, round after round, and
the table gives the medians. The issue's target: p50 well under 10 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis.asyncio as aioredis
import uvloop
from aiohttp import web

from dev.bench.harness import ROOT, Layout, pinned, tail, wait_http, write
from dev.ports import free_port
from gateway.shared.signature import SIGNATURE_HEADER, TIMESTAMP_HEADER, signed_headers, verify

SECTION = "webhooks"
SECRET = "bench-webhook-secret"
PATH = "/api/whatsapp/webhooks/webjs"
TARGET_P50 = 10.0  # ms, at the paced rate


@dataclass(frozen=True)
class Sample:
    rate: float  # events/s answered 200
    p50: float  # ms
    p99: float  # ms


# --- the floor ---------------------------------------------------------------------------------


def floor_app(redis_url: str, key: str) -> web.Application:
    redis = aioredis.Redis.from_url(redis_url)

    async def receive(request: web.Request) -> web.Response:
        body = await request.read()
        headers = request.headers
        if (
            verify(
                SECRET,
                headers.get(TIMESTAMP_HEADER),
                headers.get(SIGNATURE_HEADER),
                body,
                time.time(),
            )
            is not None
        ):
            return web.json_response({"success": False}, status=401)
        await redis.rpush(key, body)
        return web.json_response({"success": True, "queued": True})

    async def health(_: web.Request) -> web.Response:
        return web.json_response({"status": "healthy"})

    app = web.Application(client_max_size=8 * 1024**2)
    app.router.add_post(PATH, receive)
    app.router.add_get("/health", health)
    return app


# --- the client ----------------------------------------------------------------------------


def events(prefix: str) -> Iterator[bytes]:
    for n in itertools.count():
        data = {"session_id": f"bench-{n % 100}", "message_id": f"{prefix}-{n}", "body": "hi"}
        yield json.dumps({"event": "message_received", "data": data}).encode()


async def post(http: aiohttp.ClientSession, url: str, body: bytes) -> float | None:
    headers = {
        "Content-Type": "application/json",
        "X-Instance-Url": "http://127.0.0.1:3001",
        **signed_headers(SECRET, body, time.time()),
    }
    started = time.perf_counter()
    async with http.post(url, data=body, headers=headers) as resp:
        await resp.read()
        ok = resp.status == 200
    return time.perf_counter() - started if ok else None


async def run_load(url: str, connections: int, seconds: float, rate: float | None) -> Sample:
    """``connections`` senders for ``seconds``; paced at ``rate`` events/s when given."""
    bodies = events(uuid.uuid4().hex[:8])
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter()
    slot = itertools.count()

    async def sender(http: aiohttp.ClientSession) -> None:
        nonlocal failures
        while True:
            if rate is not None:
                due = start + next(slot) / rate
                if due > start + seconds:
                    return
                await asyncio.sleep(max(0.0, due - time.perf_counter()))
            elif time.perf_counter() - start > seconds:
                return
            took = await post(http, url, next(bodies))
            if took is None:
                failures += 1
            else:
                latencies.append(took)

    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(sender(http) for _ in range(connections)))
    elapsed = time.perf_counter() - start
    if failures:
        raise SystemExit(f"{url}: {failures} events were not answered 200")
    latencies.sort()
    return Sample(
        len(latencies) / elapsed,
        statistics.median(latencies) * 1000,
        latencies[int(len(latencies) * 0.99)] * 1000,
    )


# --- the receivers ---------------------------------------------------------------------------


@contextmanager
def receivers(layout: Layout, redis_url: str, prefix: str, logs: Path) -> Iterator[dict[str, str]]:
    """The gateway and the floor, each on the proxy core; their webhook URLs by name."""
    gateway_port, floor_port = free_port(), free_port()
    env = {
        **os.environ,
        "GATEWAY_PORT": str(gateway_port),
        "REDIS_URL": redis_url,
        "REDIS_PREFIX": prefix,
        "HMAC_SECRET": SECRET,
        "WHATSAPP_INSTANCES": "http://127.0.0.1:3001",
        "GATEWAY_LOG_LEVEL": "WARNING",
        "GATEWAY_HEALTH_INTERVAL": "3600",
        "GATEWAY_RECONCILE_INTERVAL": "3600",
    }
    floor_argv = [sys.executable, "-m", "dev.bench.webhooks", "--floor", str(floor_port)]
    commands = {
        "gateway": (pinned(layout.proxy, [sys.executable, "-m", "gateway"]), gateway_port),
        "floor": (pinned(layout.proxy, floor_argv), floor_port),
    }
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for name, (argv, port) in commands.items():
            log = logs / f"{name}.log"
            proc = subprocess.Popen(
                argv, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT
            )
            procs.append(proc)
            # The gateway's /health is 503 with no instance up: wait on the floor's style.
            wait_http(
                f"http://127.0.0.1:{port}/metrics"
                if name == "gateway"
                else f"http://127.0.0.1:{port}/health",
                proc,
                log,
            )
        yield {name: f"http://127.0.0.1:{port}{PATH}" for name, (_, port) in commands.items()}
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        for log in logs.glob("*.log"):
            if "Traceback" in log.read_text(errors="replace"):
                print(f"{log.name}:\n{tail(log)}", file=sys.stderr)


async def clean(redis_url: str, prefix: str) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    keys = [k async for k in redis.scan_iter(f"{prefix}*", count=1000)]
    for i in range(0, len(keys), 1000):
        await redis.delete(*keys[i : i + 1000])
    await redis.aclose()


def report(
    results: dict[tuple[str, str], Sample], args: argparse.Namespace, layout: Layout, load: str
) -> str:
    def row(name: str, title: str) -> str:
        paced, full = results[(name, "paced")], results[(name, "full")]
        return (
            f"| {title} | {full.rate:,.0f} | {full.p50:.2f} ms | {full.p99:.2f} ms "
            f"| {paced.p50:.2f} ms | {paced.p99:.2f} ms |"
        )

    gateway, floor = results[("gateway", "paced")], results[("floor", "full")]
    ratio = results[("gateway", "full")].rate / floor.rate
    return "\n".join(
        [
            f"Machine: {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
            f"Python {platform.python_version()}. Receivers on core "
            f"{','.join(map(str, layout.proxy))}, the client on core "
            f"{','.join(map(str, layout.load))}. Load average before the run: {load}.",
            f"Median of {args.rounds} interleaved rounds; as fast as possible: "
            f"{args.connections} connections for {args.seconds} s; paced: {args.rate} events/s "
            f"over {args.paced_connections} connections for {args.seconds} s.",
            "",
            "| receiver | events/s | p50 | p99 | p50 at the paced rate | p99 at the paced rate |",
            "|---|---:|---:|---:|---:|---:|",
            row("floor", "the floor: signature check and one RPUSH"),
            row("gateway", "the gateway's webhook route"),
            "",
            f"The gateway takes {ratio:.0%} of the floor's events/s.",
            f"- p50 at {args.rate} events/s < {TARGET_P50:g} ms: "
            f"{'met' if gateway.p50 < TARGET_P50 else '**not met**'} ({gateway.p50:.2f} ms)",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.webhooks", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=4)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rate", type=int, default=500, help="paced events per second")
    parser.add_argument("--paced-connections", type=int, default=16)
    parser.add_argument("--write", type=Path, help="put the table in this Markdown file")
    parser.add_argument("--floor", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    prefix = f"bench-webhooks-{uuid.uuid4().hex[:8]}:"
    if args.floor:
        app = floor_app(redis_url, f"{os.environ['REDIS_PREFIX']}floor")
        web.run_app(
            app,
            host="127.0.0.1",
            port=args.floor,
            print=None,
            access_log=None,
            loop=uvloop.new_event_loop(),
        )
        return
    layout = Layout.for_cores(sorted(os.sched_getaffinity(0)))
    os.sched_setaffinity(0, layout.load)
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    logs = ROOT / "var" / "bench-webhooks"
    logs.mkdir(parents=True, exist_ok=True)
    runs: dict[tuple[str, str], list[Sample]] = {}
    try:
        with receivers(layout, redis_url, prefix, logs) as urls:
            for round_ in range(1, args.rounds + 1):
                for name, url in urls.items():
                    for kind, connections, rate in (
                        ("paced", args.paced_connections, args.rate),
                        ("full", args.connections, None),
                    ):
                        sample = uvloop.run(run_load(url, connections, args.seconds, rate))
                        runs.setdefault((name, kind), []).append(sample)
                        print(f"round {round_} {name} {kind}: {sample}", flush=True)
    finally:
        uvloop.run(clean(redis_url, prefix))
    results = {
        key: Sample(
            statistics.median(s.rate for s in samples),
            statistics.median(s.p50 for s in samples),
            statistics.median(s.p99 for s in samples),
        )
        for key, samples in runs.items()
    }
    text = report(results, args, layout, load)
    print(text)
    if args.write:
        write(args.write, text, SECTION)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
