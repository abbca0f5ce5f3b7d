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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import redis

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
KEY = "bench-key"
ADMIN = "bench-admin"
KINDS = ("status", "send")
PATHS = ("direct", "nginx", "gateway")
SBIN = "/usr/sbin:/sbin"
MARK_START, MARK_END = "<!-- make bench: start -->", "<!-- make bench: end -->"


# --- tools and placement ------------------------------------------------------------------


def tool(name: str) -> str | None:
    return shutil.which(name, path=f"{os.environ.get('PATH', '')}:{SBIN}")


def ensure_tools() -> None:
    """Install Debian's nginx and wrk when missing (quietly; asks nothing)."""
    missing = [name for name in ("nginx", "wrk") if tool(name) is None]
    if not missing:
        return
    sudo = [] if os.geteuid() == 0 else ["sudo", "-n"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print(f"installing {' '.join(missing)} with apt-get", flush=True)
    for step in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        subprocess.run([*sudo, *step], env=env, stdout=subprocess.DEVNULL, check=False)
    still = [name for name in missing if tool(name) is None]
    if still:
        raise SystemExit(f"cannot install {' '.join(still)}: install them and run again")


@dataclass(frozen=True)
class Layout:
    """Which cores each process may run on."""

    load: tuple[int, ...]  # wrk
    instances: tuple[int, ...]
    proxy: tuple[int, ...]  # the gateway, or nginx the peer

    @classmethod
    def for_cores(cls, cores: Sequence[int]) -> Layout:
        cores = tuple(sorted(cores))
        if len(cores) >= 3:
            return cls(cores[:1], cores[1:2], cores[2:3])
        if len(cores) == 2:
            return cls(cores[:1], cores[:1], cores[1:])
        return cls(cores, cores, cores)

    def describe(self) -> str:
        def name(cores: tuple[int, ...]) -> str:
            return "core " + ",".join(map(str, cores))

        return (
            f"the proxy under test (gateway or nginx) on {name(self.proxy)}; "
            f"wrk on {name(self.load)}; the four instances on {name(self.instances)}"
        )


def pinned(cores: tuple[int, ...], argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        if process.poll() is not None:
            raise SystemExit(f"{url} exited with {process.returncode}:\n{tail(log)}")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise SystemExit(f"{url} did not answer within 30 s:\n{tail(log)}")
        time.sleep(0.05)


def tail(log: Path) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-20:]) if log.exists() else ""


def cpu_seconds(root: int) -> float:
    """CPU time used so far by ``root`` and every process under it."""
    parents: dict[int, int] = {}
    times: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK")
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        pid = int(entry.name)
        parents[pid] = int(fields[1])
        times[pid] = (int(fields[11]) + int(fields[12])) / tick
    family = {root}
    grew = True
    while grew:
        more = {pid for pid, parent in parents.items() if parent in family} - family
        grew = bool(more)
        family |= more
    return sum(times.get(pid, 0.0) for pid in family)


# --- the processes --------------------------------------------------------------------------


@dataclass
class Stack:
    """Everything the bench runs, and where."""

    layout: Layout
    workdir: Path
    instances: list[str]
    nginx: str
    gateway: str
    pids: dict[str, int]  # path -> pid whose CPU time is the proxy's
    sessions_file: Path
    prefix: str
    redis_url: str


def render(template: str, **values: str) -> str:
    text = (HERE / template).read_text()
    for name, value in values.items():
        text = text.replace(f"@{name}@", value)
    return text


@contextmanager
def running(layout: Layout, sessions: int, redis_url: str) -> Iterator[Stack]:
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
        peer_pid = start("peer", layout.proxy, [*argv, str(workdir / "peer.conf")])
        for port in ports:
            wait_http(f"http://127.0.0.1:{port}/health", processes[0], workdir / "instances.log")
        wait_http(f"http://127.0.0.1:{peer_port}/health", processes[1], workdir / "peer.log")
        gw_pid = start(
            "gateway",
            layout.proxy,
            [sys.executable, "-m", "gateway"],
            GATEWAY_PORT=str(gw_port),
            WHATSAPP_INSTANCES=",".join(instances),
            REDIS_URL=redis_url,
            REDIS_PREFIX=prefix,
            LARAVEL_API_TOKEN=KEY,
            GATEWAY_ADMIN_TOKEN=ADMIN,
            GATEWAY_LOG_LEVEL="WARNING",
            # nginx's fixed answer is no session list: reconciliation would only log that.
            GATEWAY_RECONCILE_INTERVAL="3600",
        )
        gateway = f"http://127.0.0.1:{gw_port}"
        wait_http(f"{gateway}/health", processes[2], workdir / "gateway.log")
        ids = [f"bench-{i:05d}" for i in range(sessions)]
        asyncio.run(seed(gateway, ids))
        sessions_file = workdir / "sessions.txt"
        sessions_file.write_text("\n".join(ids) + "\n")
        yield Stack(
            layout,
            workdir,
            instances,
            f"http://127.0.0.1:{peer_port}",
            gateway,
            {"direct": processes[0].pid, "nginx": peer_pid, "gateway": gw_pid},
            sessions_file,
            prefix,
            redis_url,
        )
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
    url = {"direct": stack.instances[0], "nginx": stack.nginx, "gateway": stack.gateway}[path]
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
    for path in PATHS:  # warm-up: connections, caches, the JIT of wrk's Lua
        for kind in KINDS:
            wrk(stack, path, kind, 1, opt.connections)
    runs: dict[tuple[str, str, str], list[Sample]] = {}
    for n in range(opt.rounds):
        print(f"round {n + 1} of {opt.rounds}", flush=True)
        for kind in KINDS:
            for path in PATHS:
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
}


def report(
    results: dict[tuple[str, str, str], Sample], opt: Options, layout: Layout, load: str
) -> str:
    lines = [
        f"Machine: {os.cpu_count()} cores ({cpu_model()}), {platform.system()} "
        f"{platform.release()}; Python {platform.python_version()}, {version('nginx')}, "
        f"{version('wrk')}.",
        f"Pinned with taskset: {layout.describe()}. One process each (nginx: 1 worker).",
        f"Median of {opt.rounds} interleaved rounds; saturation: {opt.connections} connections "
        f"for {opt.seconds} s; paced: {opt.rate:,} req/s over {opt.paced_connections} "
        f"connections for {opt.paced_seconds} s. Proxy CPU: share of one core it used "
        "during the saturated run.",
        f"Load average (1, 5, 15 min) before the run: {load} (other work on the machine "
        "makes the numbers noisier; compare ratios within one run).",
        "",
    ]
    for kind in KINDS:
        direct = results[("direct", kind, "paced")]
        lines += [
            f"**{TITLES[kind]}**",
            "",
            f"| path | req/s ({opt.connections} conns) | p50 | p99 | proxy CPU "
            f"| p50 at {opt.rate:,}/s | p99 at {opt.rate:,}/s | added p50 | added p99 |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for path in PATHS:
            sat, paced = results[(path, kind, "saturated")], results[(path, kind, "paced")]
            cpu = f"{sat.cpu:.0%}" if path != "direct" and sat.cpu is not None else "-"
            added = (
                f"{paced.p50 - direct.p50:+.2f} ms | {paced.p99 - direct.p99:+.2f} ms"
                if path != "direct"
                else "- | -"
            )
            lines.append(
                f"| {NAMES[path]} | {sat.rate:,.0f} | {sat.p50:.2f} ms | {sat.p99:.2f} ms | {cpu} "
                f"| {paced.p50:.2f} ms | {paced.p99:.2f} ms | {added} |"
            )
        gw, ng, dr = (results[(p, kind, "saturated")].rate for p in ("gateway", "nginx", "direct"))
        lines += ["", f"gateway/direct {gw / dr:.3f}x, gateway/nginx **{gw / ng:.2f}x**", ""]
    return "\n".join(lines)


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


def write(doc: Path, text: str) -> None:
    """Replace the generated section of ``doc`` (between the markers) with ``text``."""
    current = doc.read_text() if doc.exists() else f"# Benchmarks\n\n{MARK_START}\n{MARK_END}\n"
    before, _, rest = current.partition(MARK_START)
    _, _, after = rest.partition(MARK_END)
    doc.write_text(f"{before}{MARK_START}\n{text}\n{MARK_END}{after}")


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.proxy", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5, help="per saturated run")
    parser.add_argument("--paced-seconds", type=int, default=6, help="per paced run")
    parser.add_argument("--connections", type=int, default=50)
    parser.add_argument("--rate", type=int, default=1000, help="paced requests per second")
    parser.add_argument("--paced-connections", type=int, default=16)
    parser.add_argument("--sessions", type=int, default=1000)
    parser.add_argument("--write", type=Path, help="put the table in this Markdown file")
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
    layout = Layout.for_cores(sorted(os.sched_getaffinity(0)))
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with running(layout, args.sessions, redis_url) as stack:
        results = measure(stack, opt)
    text = report(results, opt, layout, load)
    print(text)
    if args.write:
        write(args.write, text)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
