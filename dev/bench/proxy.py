"""``make bench``: the gateway's forwarding cost, against nginx on the same cores.

Four nginx servers answering one small JSON play the instances, so that whatever sits in
front of them is the bottleneck. The gateway runs in front of them with 1,000 sessions
created through it (its normal state: pins in Redis and in memory), and nginx with
``hash $session_id consistent`` in front of the same four is the peer. wrk sends both
request kinds, ``GET /api/sessions/{id}/status`` and ``POST /api/messages/send`` (the id in
the JSON body; nginx, which does not read bodies, gets it in an ``X-Session-Id`` header),
spread over the sessions, three ways: straight to an instance (the floor), through nginx
and through the gateway. Each way is measured at saturation (50 connections: req/s, p50,
p99) and at a fixed 1,000 req/s (p50, p99), in interleaved rounds; the medians are printed
and, with ``--write``, put in ``docs/benchmarks.md``.

Every process is pinned with ``taskset``: the proxy under test (gateway or nginx) gets its
own core, wrk and the instances share the other(s). Redis is the one in ``REDIS_URL``
(a bench prefix, deleted afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

from dev.bench import profile
from dev.bench.harness import (
    KEY,
    ROOT,
    Layout,
    cpu_seconds,
    ensure_tools,
    pinned,
    tool,
    wait_http,
    write,
)
from dev.bench.memory import Memory
from dev.bench.memory import measure as measure_memory
from dev.ports import free_port

HERE = Path(__file__).resolve().parent
ADMIN = "bench-admin"
KINDS = ("status", "send")
PATHS = ("direct", "nginx", "gateway")
MANY = "gateway, processes"  # the path of the gateway run with --processes N
SECTION = "proxy"


# --- the processes --------------------------------------------------------------------------


@dataclass
class Stack:
    """Everything the bench runs, and where."""

    layout: Layout
    workdir: Path
    instances: list[str]
    urls: dict[str, str]  # path -> where wrk sends its requests
    pids: dict[str, int]  # path -> pid whose CPU time (with its children's) is the proxy's
    sessions_file: Path
    prefix: str
    redis_url: str


def render(template: str, **values: str) -> str:
    text = (HERE / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


@contextmanager
def running(
    layout: Layout, sessions: int, redis_url: str, processes_wanted: int = 1
) -> Iterator[Stack]:
    workdir = Path(tempfile.mkdtemp(prefix="wa-bench-"))
    workdir.chmod(0o755)  # nginx workers run as nobody
    processes: list[subprocess.Popen[bytes]] = []

    def start(name: str, cores: tuple[int, ...], argv: list[str], **env: str) -> int:
        log = workdir / f"{name}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                pinned(cores, argv),
                cwd=ROOT,
                env={**os.environ, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        processes.append(process)
        return process.pid

    ports = [free_port() for _ in range(4)]
    peer_port, gw_port = free_port(), free_port()
    instances = [f"http://127.0.0.1:{p}" for p in ports]
    prefix = f"bench-{uuid.uuid4().hex[:8]}:"
    nginx = tool("nginx")
    assert nginx is not None
    try:
        for name, text in (
            (
                "instances",
                render(
                    "instances.conf",
                    DIR=str(workdir),
                    LISTEN="\n".join(f"        listen 127.0.0.1:{p};" for p in ports),
                ),
            ),
            (
                "peer",
                render(
                    "peer.conf",
                    DIR=str(workdir),
                    PORT=str(peer_port),
                    SERVERS="\n".join(f"        server 127.0.0.1:{p};" for p in ports),
                ),
            ),
        ):
            (workdir / f"{name}.conf").write_text(text)
        argv = [nginx, "-p", str(workdir), "-e", str(workdir / "nginx-start.log"), "-c"]
        start("instances", layout.instances, [*argv, str(workdir / "instances.conf")])
        start("peer", layout.proxy, [*argv, str(workdir / "peer.conf")])
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/health", processes[0], workdir / "instances.log")
        wait_http(f"http://127.0.0.1:{peer_port}/health", processes[1], workdir / "peer.log")
        gateway_env = {
            "WHATSAPP_INSTANCES": ",".join(instances),
            "REDIS_URL": redis_url,
            "REDIS_PREFIX": prefix,
            "LARAVEL_API_TOKEN": KEY,
            "GATEWAY_ADMIN_TOKEN": ADMIN,
            # No log line per request, as nginx's access_log is off.
            "GATEWAY_LOG_LEVEL": "WARNING",
            # nginx's fixed answer is no session list: reconciliation would only log that.
            "GATEWAY_RECONCILE_INTERVAL": "3600",
        }
        argv = [sys.executable, "-m", "gateway"]
        pids = {"direct": processes[0].pid, "nginx": processes[1].pid}
        urls = {"direct": instances[0], "nginx": f"http://127.0.0.1:{peer_port}"}
        pids["gateway"] = start(
            "gateway", layout.proxy, argv, GATEWAY_PORT=str(gw_port), **gateway_env
        )
        urls["gateway"] = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{urls['gateway']}/health", processes[2], workdir / "gateway.log")
        ids = [f"bench-{i:05d}" for i in range(sessions)]
        asyncio.run(seed(urls["gateway"], ids))
        if processes_wanted > 1:
            many_port = free_port()
            pids[MANY] = start(
                "gateway-processes",
                layout.processes,
                [*argv, "--processes", str(processes_wanted)],
                GATEWAY_PORT=str(many_port),
                **gateway_env,
            )
            urls[MANY] = f"http://127.0.0.1:{many_port}"
            wait_http(f"{urls[MANY]}/health", processes[3], workdir / "gateway-processes.log")
        sessions_file = workdir / "sessions.txt"
        sessions_file.write_text("\n".join(ids) + "\n")
        yield Stack(layout, workdir, instances, urls, pids, sessions_file, prefix, redis_url)
    finally:
        for process in reversed(processes):
            process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        client = redis.Redis.from_url(redis_url)
        keys = list(client.scan_iter(f"{prefix}*"))
        if keys:
            client.delete(*keys)
        client.close()
        shutil.rmtree(workdir, ignore_errors=True)


async def seed(gateway: str, ids: Sequence[str]) -> None:
    """Create every session through the gateway, as the backend would, and check the pins."""
    queue = list(ids)
    async with aiohttp.ClientSession() as http:

        async def creator() -> None:
            while queue:
                sid = queue.pop()
                body = {"session_id": sid, "api_key": KEY}
                async with http.post(f"{gateway}/api/sessions", json=body) as resp:
                    if resp.status != 200:
                        raise SystemExit(f"creating {sid}: {resp.status} {await resp.text()}")

        await asyncio.gather(*(creator() for _ in range(16)))
        headers = {"Authorization": f"Bearer {ADMIN}"}
        async with http.get(f"{gateway}/gateway/distribution", headers=headers) as resp:
            spread = await resp.json()
    if spread["pinned"] != len(ids):
        raise SystemExit(f"expected {len(ids)} pins, the gateway has {spread['pinned']}")
    counts = ", ".join(str(row["pinned"]) for row in spread["instances"])
    print(f"{len(ids)} sessions created through the gateway, pinned {counts}", flush=True)


# --- load -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    rate: float  # requests per second achieved
    p50: float  # ms
    p99: float  # ms
    cpu: float | None = None  # share of one core used by the proxy


def wrk(
    stack: Stack,
    path: str,
    kind: str,
    seconds: int,
    connections: int,
    rate: int | None = None,
) -> Sample:
    """One wrk run; at saturation when ``rate`` is None, else paced at ``rate`` req/s."""
    url = stack.urls[path]
    threads = len(stack.layout.load)
    script = "paced.lua" if rate else "load.lua"
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{max(connections, threads)}",
        f"-d{seconds}s",
        "--timeout",
        "5s",
        "-s",
        script,
        url,
        "--",
        kind,
        str(stack.sessions_file),
        KEY,
    ]
    if rate:
        argv.append(str(rate / threads))
    before = cpu_seconds(stack.pids[path])
    started = time.monotonic()
    done = subprocess.run(pinned(stack.layout.load, argv), cwd=HERE, capture_output=True, text=True)
    elapsed = time.monotonic() - started
    used = cpu_seconds(stack.pids[path]) - before
    match = re.search(r"^RESULT (\{.*\})$", done.stdout, re.MULTILINE)
    if done.returncode != 0 or match is None:
        raise SystemExit(f"wrk failed on {path}/{kind}:\n{done.stdout}\n{done.stderr}")
    result = json.loads(match.group(1))
    errors = {k: result[k] for k in ("connect", "read", "write", "status", "timeout") if result[k]}
    if errors:
        raise SystemExit(f"{path}/{kind}: errors {errors} in {result['requests']} requests")
    return Sample(
        rate=result["requests"] / (result["duration_us"] / 1e6),
        p50=result["p50_us"] / 1000,
        p99=result["p99_us"] / 1000,
        cpu=used / elapsed,
    )


@dataclass(frozen=True)
class Options:
    rounds: int
    seconds: int
    paced_seconds: int
    connections: int
    rate: int
    paced_connections: int


def measure(stack: Stack, opt: Options) -> dict[tuple[str, str, str], Sample]:
    """Medians over interleaved rounds, keyed by (path, kind, "saturated" | "paced")."""
    paths = [p for p in (*PATHS, MANY) if p in stack.urls]
    for path in paths:  # warm-up: connections, caches, the JIT of wrk's Lua
        for kind in KINDS:
            wrk(stack, path, kind, 1, opt.connections)
    runs: dict[tuple[str, str, str], list[Sample]] = {}
    for n in range(opt.rounds):
        print(f"round {n + 1} of {opt.rounds}", flush=True)
        for kind in KINDS:
            for path in paths:
                sample = wrk(stack, path, kind, opt.seconds, opt.connections)
                runs.setdefault((path, kind, "saturated"), []).append(sample)
                sample = wrk(stack, path, kind, opt.paced_seconds, opt.paced_connections, opt.rate)
                runs.setdefault((path, kind, "paced"), []).append(sample)
    return {key: median(samples) for key, samples in runs.items()}


def median(samples: Sequence[Sample]) -> Sample:
    cpus = [s.cpu for s in samples if s.cpu is not None]
    return Sample(
        statistics.median(s.rate for s in samples),
        statistics.median(s.p50 for s in samples),
        statistics.median(s.p99 for s in samples),
        statistics.median(cpus) if cpus else None,
    )


# --- the report -------------------------------------------------------------------------------

TITLES = {
    "status": "`GET /api/sessions/{id}/status`",
    "send": "`POST /api/messages/send` (id in the JSON body; nginx gets it in `X-Session-Id`)",
}
NAMES = {
    "direct": "direct to an instance",
    "nginx": "nginx, `hash $session_id consistent`",
    "gateway": "the gateway",
    MANY: "the gateway, `--processes {n}`",
}


# The targets: one process, same cores, same run.
TARGET_RATIO = 0.25  # gateway/nginx req/s at saturation
TARGET_RATIO_MANY = 0.4  # the same with --processes 2 (nginx: still one worker)
TARGET_ADDED = (0.5, 2.0)  # ms added over direct at the paced rate, p50 and p99
TARGET_RSS = 150.0  # MB per process with a million pinned sessions


def report(
    results: dict[tuple[str, str, str], Sample],
    opt: Options,
    layout: Layout,
    load: str,
    memory: Memory | None,
    processes: int,
) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, {version('nginx')}, "
        f"{version('wrk')}.",
        f"Pinned with taskset: {layout.describe()}. One process each (nginx: 1 worker), "
        f"but for the gateway's `--processes {processes}` row (its CPU share counts every "
        "process).",
        f"Median of {opt.rounds} interleaved rounds; saturation: {opt.connections} connections "
        f"for {opt.seconds} s; paced: {opt.rate:,} req/s over {opt.paced_connections} "
        f"connections for {opt.paced_seconds} s. Proxy CPU: share of one core the proxy used "
        "during the saturated run; per core: its req/s divided by that share.",
        f"Load average (1, 5, 15 min) before the run: {load} (other work on the machine "
        "makes the numbers noisier; compare ratios within one run).",
        "",
    ]
    verdicts = []
    for kind in KINDS:
        direct = results[("direct", kind, "paced")]
        lines += [
            f"**{TITLES[kind]}**",
            "",
            f"| path | req/s ({opt.connections} conns) | p50 | p99 | proxy CPU | per core "
            f"| p50 at {opt.rate:,}/s | p99 at {opt.rate:,}/s | added p50 | added p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for path in [p for p in (*PATHS, MANY) if (p, kind, "saturated") in results]:
            sat, paced = results[(path, kind, "saturated")], results[(path, kind, "paced")]
            if path == "direct" or not sat.cpu:
                cpu = added = "- | -"
            else:
                cpu = f"{sat.cpu:.0%} | {sat.rate / sat.cpu:,.0f}"
                added = f"{paced.p50 - direct.p50:+.2f} ms | {paced.p99 - direct.p99:+.2f} ms"
            name = NAMES[path].format(n=processes)
            lines.append(
                f"| {name} | {sat.rate:,.0f} | {sat.p50:.2f} ms | {sat.p99:.2f} ms | {cpu} "
                f"| {paced.p50:.2f} ms | {paced.p99:.2f} ms | {added} |"
            )
        gw, ng, dr = (results[(p, kind, "saturated")].rate for p in ("gateway", "nginx", "direct"))
        ratios = f"gateway/direct {gw / dr:.3f}x, gateway/nginx **{gw / ng:.2f}x**"
        many = results.get((MANY, kind, "saturated"))
        if many is not None:
            ratios += f"; with `--processes {processes}`: **{many.rate / ng:.2f}x** nginx"
            verdicts.append(
                verdict(
                    f"{kind}: `--processes {processes}` gateway/nginx req/s >= {TARGET_RATIO_MANY}",
                    many.rate / ng >= TARGET_RATIO_MANY,
                    f"{many.rate / ng:.2f}x",
                )
            )
        lines += ["", ratios, ""]
        paced = results[("gateway", kind, "paced")]
        added = (paced.p50 - direct.p50, paced.p99 - direct.p99)
        verdicts += [
            verdict(
                f"{kind}: gateway/nginx req/s >= {TARGET_RATIO}",
                gw / ng >= TARGET_RATIO,
                f"{gw / ng:.2f}x",
            ),
            verdict(
                f"{kind}: added at {opt.rate:,} req/s <= {TARGET_ADDED[0]} ms p50, "
                f"<= {TARGET_ADDED[1]} ms p99",
                added[0] <= TARGET_ADDED[0] and added[1] <= TARGET_ADDED[1],
                f"{added[0]:+.2f} ms, {added[1]:+.2f} ms",
            ),
        ]
    if memory is not None:
        lines += [
            f"Memory of one gateway process with {memory.sessions:,} pinned sessions: "
            f"{memory.rss_mb:.0f} MB resident once serving, {memory.peak_mb:.0f} MB at most "
            f"while loading them; serving {memory.load_s:.1f} s after start.",
            "",
        ]
        verdicts.append(
            verdict(
                f"RSS with {memory.sessions:,} pins <= {TARGET_RSS:.0f} MB",
                memory.rss_mb <= TARGET_RSS,
                f"{memory.rss_mb:.0f} MB",
            )
        )
    return "\n".join([*lines, "Targets:", "", *verdicts])


def keyed_cost(stack: Stack, opt: Options) -> str:
    """What an ``Idempotency-Key`` costs a send, and the Redis commands per request with and
    without one (without: none, the pins are in memory)."""
    client = redis.Redis.from_url(stack.redis_url)

    def commands() -> int:
        return int(client.info("stats")["total_commands_processed"])

    rows = []
    try:
        for kind, title in (("send", "without a key"), ("keyed", "with a new key each")):
            runs, per_request = [], []
            for _ in range(opt.rounds):
                before = commands()
                sample = wrk(stack, "gateway", kind, opt.seconds, opt.connections)
                per_request.append((commands() - before - 1) / (sample.rate * opt.seconds))
                runs.append(sample)
            sat = median(runs)
            paced = wrk(stack, "gateway", kind, opt.paced_seconds, opt.paced_connections, opt.rate)
            rows.append(
                f"| {title} | {sat.rate:,.0f} | {sat.p50:.2f} ms | {sat.p99:.2f} ms "
                f"| {paced.p50:.2f} ms | {paced.p99:.2f} ms "
                f"| {statistics.median(per_request):.3f} |"
            )
    finally:
        client.close()
    return "\n".join(
        [
            f"**{TITLES['send']} through the gateway (one process), with and without an "
            "`Idempotency-Key`**",
            "",
            "Redis commands per request: every command the Redis server processed during the "
            "saturated run, per request, the commands inside a script included (a keyed send "
            "is two round trips: one script takes the key, one keeps the answer); health "
            "checks and anything else using the server count too.",
            "",
            f"| send | req/s ({opt.connections} conns) | p50 | p99 | p50 at {opt.rate:,}/s "
            f"| p99 at {opt.rate:,}/s | Redis commands per request |",
            "|---|---:|---:|---:|---:|---:|---:|",
            *rows,
        ]
    )


def verdict(target: str, met: bool, measured: str) -> str:
    return f"- {target}: {'met' if met else '**not met**'} ({measured})"


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def version(name: str) -> str:
    path = tool(name)
    if path is None:
        return name
    flag = "-v" if name == "nginx" else "--version"
    done = subprocess.run([path, flag], capture_output=True, text=True)
    first = (done.stdout + done.stderr).strip().splitlines()[0]
    found = re.search(r"(\d+\.\d+[.\d]*)", first)
    return f"{name} {found.group(1)}" if found else name


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.proxy", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per saturated run")
    parser.add_argument("--paced-seconds", type=int, default=6, help="per paced run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="paced requests per second")
    parser.add_argument("--paced-connections", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument(
        "--processes", type=int, default=2, help="also the gateway with --processes N (1: not)"
    )
    parser.add_argument(
        "--memory-sessions",
        type=int,
        default=1_000_000,
        help="pins for the memory measurement (0: skip it)",
    )
    parser.add_argument(
        "--no-profile", action="store_true", help="skip sampling the gateway with py-spy"
    )
    parser.add_argument("--write", type=Path, help="put the tables in this Markdown file")
    args = parser.parse_args()
    opt = Options(
        args.rounds,
        args.seconds,
        args.paced_seconds,
        args.connections,
        args.rate,
        args.paced_connections,
    )
    ensure_tools()
    layout = Layout.for_cores(sorted(os.sched_getaffinity(0)), args.processes)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    memory = None
    profiled = None
    with running(layout, args.sessions, redis_url, args.processes) as stack:
        results = measure(stack, opt)
        print("keyed sends", flush=True)
        keyed = keyed_cost(stack, opt)
        if not args.no_profile:
            print("profile of the gateway", flush=True)
            samples = stack.workdir / "profile.txt"
            if profile.record(
                stack.pids["gateway"],
                8,
                samples,
                lambda: wrk(stack, "gateway", "send", 10, opt.connections),
            ):
                profiled = (
                    "py-spy on the one-process gateway during a saturated run of "
                    f"{TITLES['send']} ({opt.connections} connections), 500 samples a second.\n\n"
                    + profile.summary(samples)
                )
        if args.memory_sessions:
            print(f"memory with {args.memory_sessions:,} pins", flush=True)
            memory = measure_memory(args.memory_sessions, stack.instances, redis_url, layout.proxy)
    text = report(results, opt, layout, load, memory, args.processes)
    print(text)
    if profiled:
        print(profiled)
    print(keyed)
    if args.write:
        write(args.write, text, SECTION)
        write(args.write, keyed, "idempotency")
        if profiled:
            write(args.write, profiled, "profile")
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
