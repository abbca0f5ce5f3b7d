"""The deploy files, checked by the tools that read them.

Supervisor's own parser, ``systemd-analyze verify``, ``promtool check`` and ``promtool test``;
the Grafana dashboard and the alert rules are held to the metric names that a running gateway
and a running worker really export. (``tests/system/test_supervisor.py`` runs the supervisor files.)
"""

from __future__ import annotations

import asyncio
import configparser
import getpass
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from pwd import getpwnam

import aiohttp
import pytest
import yaml

from dev.ports import free_port
from gateway.metrics import GatewayMetrics
from gateway.shared.loader import load_settings, local_config
from gateway.shared.settings import DEFAULT_CONFIG, Settings
from tests.accounts import AccountsDB
from tests.harness import REDIS_URL, ROOT, RunningGateway, eventually
from tests.supervised import LEAKY
from tests.support import unavailable
from workers.metrics import WorkerMetrics
from workers.settings import WorkerSettings, load_worker_settings

DEPLOY = ROOT / "deploy"
SUPERVISOR_CONF = DEPLOY / "supervisor" / "whatsapp-gateway.conf"
UNITS = DEPLOY / "systemd"
PROMETHEUS = DEPLOY / "prometheus"
RULES = PROMETHEUS / "whatsapp-gateway.rules.yml"
DASHBOARD = DEPLOY / "grafana" / "whatsapp-gateway.json"
GRACE = WorkerSettings().timeout  # the workers' default grace is the job timeout
# Metric names in PromQL: ours, the process collector's, and Prometheus's own `up`.
METRIC = re.compile(r"\b(?:gateway|workers|process)_[a-z0-9_]+\b|\bup\b(?=\s*[{)])")
# Samples a family of each type exposes, by suffix.
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
}
# Label names in PromQL (grouping, selectors), legends and alert templates.
GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
SELECTOR = re.compile(r"\{([^{}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")
TEMPLATE = re.compile(r"\{\{\s*(?:\$labels\.)?([a-zA-Z_]\w*)\s*\}\}")
# Labels Prometheus adds to every scraped series, and the buckets' own.
TARGET_LABELS = {"instance", "job"}


def run_ok(
    argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: float = 60
) -> str:
    """A tool's standard output; it must exit 0 (its output is the failure's message)."""
    result = subprocess.run(
        argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def read_ini(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None, strict=True)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # systemd keys are cased
    parser.read_string(path.read_text(), source=str(path))
    return parser


# --- supervisor ------------------------------------------------------------------------------


def test_supervisor_conf_parses_and_keeps_what_ops_rely_on() -> None:
    conf = read_ini(SUPERVISOR_CONF)

    assert set(conf.sections()) == {
        "group:whatsapp-gateway",
        "program:wa-gateway",
        "program:wa-workers",
    }
    assert conf["group:whatsapp-gateway"]["programs"].split(",") == ["wa-gateway", "wa-workers"]
    for name in ("program:wa-gateway", "program:wa-workers"):
        program = conf[name]
        assert program["command"].startswith("/opt/whatsapp-gateway/.venv/bin/python -m ")
        assert program["command"].endswith(" --log-format json")
        assert program["directory"] == "/opt/whatsapp-gateway"
        assert program["user"]
        assert "LARAVEL_ENV_FILE=" in program["environment"]
        assert program.getboolean("autostart") and program.getboolean("autorestart")
        # Quick enough for the 3 s restart target, long enough to catch a bad setting.
        assert 1 <= program.getint("startsecs") < 3
        assert program["stopsignal"] == "TERM"
        assert program.getboolean("stopasgroup") and program.getboolean("killasgroup")
        assert program["stdout_logfile"].startswith("/var/log/whatsapp-gateway/")
    workers = conf["program:wa-workers"]
    assert workers.getint("numprocs") > 1
    assert "%(process_num)" in workers["process_name"]
    assert "%(process_num)" in workers["environment"]  # each process its own metrics port
    assert workers.getint("stopwaitsecs") > GRACE


def test_supervisor_conf_loads_in_supervisor_itself(tmp_path: Path) -> None:
    from supervisor import options

    logs = tmp_path / "log"
    logs.mkdir()
    text = SUPERVISOR_CONF.read_text().replace("/var/log/whatsapp-gateway", str(logs))
    text = text.replace("user=www-data", f"user={getpass.getuser()}")
    (tmp_path / "wa.conf").write_text(text)
    main = tmp_path / "supervisord.conf"
    main.write_text(
        f"[supervisord]\nlogfile={tmp_path}/supervisord.log\npidfile={tmp_path}/s.pid\n"
        f"[include]\nfiles={tmp_path}/wa.conf\n"
    )
    server = options.ServerOptions()
    server.realize(args=["-c", str(main)])

    (group,) = server.process_group_configs
    names = [p.name for p in group.process_configs]
    assert group.name == "whatsapp-gateway"
    assert names == [
        "wa-gateway",
        "wa-workers_01",
        "wa-workers_02",
        "wa-workers_03",
        "wa-workers_04",
    ]
    ports = {p.environment["GATEWAY_WORKERS_METRICS_PORT"] for p in group.process_configs[1:]}
    assert ports == {"9101", "9102", "9103", "9104"}


# --- settings files: the tracked one holds defaults, the operator's is never tracked ---------

TRACKED_CONFIG = ROOT / DEFAULT_CONFIG
LOCAL_CONFIG = local_config(TRACKED_CONFIG)


def test_the_tracked_config_holds_only_the_defaults(tmp_path: Path) -> None:
    """Nothing to edit there, so an upgrade's ``git pull`` never meets an operator's edit."""
    copy = tmp_path / "gateway.toml"  # away from any local file of this checkout
    shutil.copy(TRACKED_CONFIG, copy)
    assert load_settings({"GATEWAY_CONFIG": str(copy)}) == Settings()
    assert load_worker_settings({"GATEWAY_CONFIG": str(copy)})[1] == WorkerSettings()


def git(cwd: Path, *args: str) -> str:
    """git in a repository of the test's own, with no user's or system's configuration."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(cwd.parent),  # no user's git config
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "ops",
        "GIT_AUTHOR_EMAIL": "ops@example.org",
        "GIT_COMMITTER_NAME": "ops",
        "GIT_COMMITTER_EMAIL": "ops@example.org",
    }
    return run_ok(["git", "-c", "init.defaultBranch=main", "-c", "pull.ff=only", *args], cwd, env)


def test_the_local_config_is_ignored_by_git_and_survives_a_git_pull(tmp_path: Path) -> None:
    """The deploy guide's upgrade: settings in config/gateway.local.toml, then ``git pull``
    of a release that changed the tracked file: no conflict, nothing to commit, and the
    operator's values still win over the new defaults."""
    relative = LOCAL_CONFIG.relative_to(ROOT)
    tracked_files = run_ok(["git", "ls-files", "config"], ROOT).split()
    assert str(DEFAULT_CONFIG) in tracked_files and str(relative) not in tracked_files
    run_ok(["git", "check-ignore", "--quiet", "--no-index", str(relative)], ROOT)

    upstream, server = tmp_path / "upstream", tmp_path / "server"
    (upstream / "config").mkdir(parents=True)
    shutil.copy(ROOT / ".gitignore", upstream / ".gitignore")
    shutil.copy(TRACKED_CONFIG, upstream / DEFAULT_CONFIG)
    git(upstream, "init", "--quiet")
    git(upstream, "add", ".")
    git(upstream, "commit", "--quiet", "-m", "release 1")
    git(tmp_path, "clone", "--quiet", str(upstream), str(server))
    (server / relative).write_text('placement = "shard"\nport = 9000\n')  # the operator's

    tracked = upstream / DEFAULT_CONFIG  # release 2 changes the defaults file
    tracked.write_text(tracked.read_text().replace("port = 8080", "port = 8081"))
    tracked.write_text(tracked.read_text() + "\n# a comment of release 2\n")
    git(upstream, "commit", "--quiet", "-am", "release 2")
    git(server, "pull", "--quiet")

    assert git(server, "status", "--porcelain") == ""  # nothing of the operator's shows
    assert "# a comment of release 2" in (server / DEFAULT_CONFIG).read_text()
    settings = load_settings({"GATEWAY_CONFIG": str(server / DEFAULT_CONFIG)})
    assert (settings.placement, settings.port) == ("shard", 9000)
    assert settings.sources["port"] == f"toml ({server / relative})"


# --- the guide's own commands, as written ----------------------------------------------------

GUIDE = DEPLOY / "README.md"
INSTALL_DIR = "/opt/whatsapp-gateway"
GUIDE_DOTENV = "/var/www/laravel/.env"


def guide_block(section: str, containing: str) -> list[str]:
    """The lines of the ``sh`` block of a section of deploy/README.md that holds a string."""
    part = GUIDE.read_text().split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    blocks = [b for b in re.findall(r"```sh\n(.*?)```", part, re.S) if containing in b]
    assert len(blocks) == 1, (section, containing)
    return blocks[0].splitlines()


def test_the_guide_runs_commands_as_www_data_without_sudo() -> None:
    """A minimal Debian has no sudo; runuser (util-linux) is always there."""
    commands = "\n".join(re.findall(r"```sh\n(.*?)```", GUIDE.read_text(), re.S))
    assert "sudo" not in commands
    assert "runuser -u www-data -- " in commands
    assert "/usr/bin/python3 -m venv .venv" in commands


@pytest.fixture
def www_data() -> None:
    """Root with Debian's www-data user and python3-venv (.ci/run installs it)."""
    if os.geteuid() != 0 or shutil.which("runuser") is None:
        unavailable("the guide's commands run as root, with runuser")
    try:
        getpwnam("www-data")
    except KeyError:
        unavailable("no www-data user (Debian's base-passwd has one)")
    probe = subprocess.run(["/usr/bin/python3", "-c", "import ensurepip"], check=False)
    if probe.returncode != 0:
        unavailable("/usr/bin/python3 has no venv: install Debian's python3-venv (.ci/run does)")


def test_the_guides_install_and_settings_steps_work_as_written(
    www_data: None, redis_prefix: str
) -> None:
    """Install, local settings file and check-config, run as the guide says (but for its
    apt-get and git clone: the checkout's files are copied), the checks as www-data, who
    must be able to run the venv and read everything: a venv of a pyenv Python is not."""
    here = Path(tempfile.mkdtemp(prefix="wa-deploy-"))  # not under pytest's root-only tmp
    try:
        here.chmod(0o755)
        install = here / "whatsapp-gateway"
        for name in run_ok(["git", "ls-files"], ROOT).splitlines():
            if (ROOT / name).is_file():
                (install / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / name, install / name)
        dotenv = here / "laravel.env"
        dotenv.write_text(
            f"REDIS_URL={REDIS_URL}\nREDIS_PREFIX={redis_prefix}\nLARAVEL_API_TOKEN=zzz-secret\n"
        )
        steps = [
            line
            for line in guide_block("1. Install", "-m venv")
            if not line.startswith(("apt-get", "git clone"))
        ]
        settings = guide_block("2. Settings", "gateway.local.toml <<")
        check = guide_block("2. Settings", "check-config")
        script = "\n".join(["set -euo pipefail", *steps, *settings, *check])
        script = script.replace(INSTALL_DIR, str(install)).replace(GUIDE_DOTENV, str(dotenv))
        env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
        env.pop("VIRTUAL_ENV", None)
        out = run_ok(["bash", "-c", script], here, env, timeout=300)
        lines = out.splitlines()
        local = "[toml (config/gateway.local.toml)]"  # relative to the directory, as run
        assert any(line.startswith("processes ") and local in line for line in lines), lines
        assert any(line.startswith("laravel_api_token ") for line in lines)
        assert "zzz-secret" not in out
        assert any(line.startswith("workers.concurrency ") for line in lines)  # the workers'
    finally:
        shutil.rmtree(here)


# --- systemd ---------------------------------------------------------------------------------


@pytest.mark.parametrize("unit", ["whatsapp-gateway.service", "whatsapp-workers@.service"])
def test_systemd_units_keep_what_ops_rely_on(unit: str) -> None:
    conf = read_ini(UNITS / unit)
    service = conf["Service"]
    assert service["ExecStart"].startswith("/opt/whatsapp-gateway/.venv/bin/python -m ")
    assert service["ExecStart"].endswith(" --log-format json")
    assert service["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert service["WorkingDirectory"] == "/opt/whatsapp-gateway"
    assert service["EnvironmentFile"]
    assert service["Restart"] == "always"
    assert service["RestartSec"] == "1"
    assert service["KillSignal"] == "SIGTERM"
    assert conf["Unit"]["PartOf"] == "whatsapp-gateway.target"
    assert conf["Unit"]["ReloadPropagatedFrom"] == "whatsapp-gateway.target"
    assert conf["Install"]["WantedBy"] == "whatsapp-gateway.target"
    if unit.startswith("whatsapp-workers"):
        # Running jobs get the grace (default: the job timeout) and then are settled.
        assert int(service["TimeoutStopSec"]) >= GRACE + 30
        assert "%i" in service["Environment"]  # each instance its own metrics port
    else:
        assert int(service["TimeoutStopSec"]) > 60  # the longest proxied request


def test_the_target_starts_at_boot() -> None:
    assert read_ini(UNITS / "whatsapp-gateway.target")["Install"]["WantedBy"] == (
        "multi-user.target"
    )


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not found")
def test_systemd_units_pass_systemd_analyze_verify(tmp_path: Path) -> None:
    """Verified with this checkout and Python in place of /opt/..., which must exist."""
    copies = {
        "whatsapp-gateway.target": "whatsapp-gateway.target",
        "whatsapp-gateway.service": "whatsapp-gateway.service",
        "whatsapp-workers@.service": "whatsapp-workers@01.service",
    }
    for source, target in copies.items():
        text = (UNITS / source).read_text()
        text = text.replace("/opt/whatsapp-gateway/.venv/bin/python", sys.executable)
        text = text.replace("/opt/whatsapp-gateway", str(ROOT))
        (tmp_path / target).write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", *(str(tmp_path / t) for t in copies.values())],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    about_ours = [ln for ln in result.stderr.splitlines() if any(t in ln for t in copies.values())]
    assert result.returncode == 0, result.stderr
    assert about_ours == [], result.stderr


# --- Prometheus ------------------------------------------------------------------------------


@pytest.fixture
def promtool() -> str:
    """promtool from Debian's prometheus package, which .ci/run installs when missing."""
    path = shutil.which("promtool")
    if path is None:
        unavailable("promtool not found: install Debian's `prometheus` package (.ci/run does)")
    return path


def run_promtool(promtool: str, *args: str) -> str:
    return run_ok([promtool, *args], PROMETHEUS)


def test_alert_rules_pass_promtool_check(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "rules", RULES.name)


def test_alert_rules_pass_their_unit_tests(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "test", "rules", "whatsapp-gateway.test.yml")


def test_scrape_config_passes_promtool_check(promtool: str) -> None:
    assert "SUCCESS" in run_promtool(promtool, "check", "config", "prometheus.yml")


def alert_names() -> set[str]:
    return {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]}


def test_every_alert_rule_has_a_unit_test() -> None:
    tests = yaml.safe_load((PROMETHEUS / "whatsapp-gateway.test.yml").read_text())["tests"]
    tested = {
        case["alertname"]
        for test in tests
        for case in test["alert_rule_test"]
        if case.get("exp_alerts")
    }
    assert tested == alert_names()


# --- metric names: dashboard and rules against what the code exports ------------------------


def exported(text: str) -> set[str]:
    """Every sample name a /metrics page can carry, from its ``# TYPE`` lines.

    Families with labels show no sample until first counted, but always their TYPE line.
    """
    names = set()
    for match in re.finditer(r"^# TYPE (\S+) (\S+)$", text, flags=re.M):
        name, kind = match.groups()
        base = name.removesuffix("_total") if kind == "counter" else name
        names.update(base + suffix for suffix in SUFFIXES.get(kind, ("",)))
    return names


@pytest.fixture
async def worker_metrics(redis_prefix: str) -> AsyncIterator[str]:
    """The /metrics page of a real ``python -m workers`` process."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
    env |= {"REDIS_URL": REDIS_URL, "REDIS_PREFIX": redis_prefix}
    proc = await asyncio.create_subprocess_exec(
        *(sys.executable, "-m", "workers", "run", "--metrics-port", str(port)),
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    page: list[str] = []
    try:
        async with aiohttp.ClientSession() as http:

            async def scraped() -> bool:
                try:
                    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
                        page.append(await resp.text())
                        return resp.status == 200
                except aiohttp.ClientError:
                    return proc.returncode is not None  # died: stop waiting, fail below

            await eventually(scraped, timeout=15)
        assert proc.returncode is None, "the worker died"
        yield page[-1]
    finally:
        if proc.returncode is None:
            proc.terminate()
            await proc.wait()


@pytest.fixture
async def exported_names(
    worker_metrics: str,
    simulators: Callable[..., Awaitable[list]],
    gateways: Callable[..., Awaitable[RunningGateway]],
    accounts_db: AccountsDB,
    http: aiohttp.ClientSession,
) -> set[str]:
    """Sample names of a running gateway (with the backend's database, whose metrics exist
    only then) and a running worker, read from their /metrics."""
    sims = await simulators(1)
    gateway = await gateways([s.url for s in sims], mysql_dsn=accounts_db.dsn)
    async with http.get(f"{gateway.url}/metrics") as resp:
        names = exported(await resp.text()) | exported(worker_metrics)
    assert {"gateway_requests_total", "workers_jobs_total", "process_start_time_seconds"} <= names
    return names


def panels(dashboard: dict) -> Iterator[dict]:
    for panel in dashboard["panels"]:
        if panel["type"] == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


def metrics_in(expr: str) -> set[str]:
    return set(METRIC.findall(expr))


async def test_every_dashboard_query_names_a_metric_the_code_exports(
    exported_names: set[str],
) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    used = set()
    for panel in panels(dashboard):
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            names = metrics_in(target["expr"])
            assert names, f"{panel['title']!r}: no metric in {target['expr']!r}"
            unknown = names - exported_names - {"up"}
            assert not unknown, f"{panel['title']!r} names {unknown}, which nothing exports"
            used |= names
    # What ops asked to see: requests and errors per instance, latency, sessions and their
    # balance, queue depths and ages, job outcomes, the webhook backlog, the write-back lag.
    assert {
        "gateway_requests_total",
        "gateway_upstream_errors_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_instance_active_sessions",
        "workers_queue_jobs",
        "workers_queue_oldest_waiting_seconds",
        "workers_jobs_total",
        "workers_webhook_backlog",
        "workers_webhook_oldest_waiting_seconds",
        "gateway_webhooks_received_total",
        "gateway_db_oldest_pending_seconds",
    } <= used


async def test_every_alert_rule_names_a_metric_the_code_exports(
    exported_names: set[str],
) -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            names = metrics_in(rule["expr"])
            assert names, rule["alert"]
            assert not names - exported_names - {"up"}, rule["alert"]


def label_names_of_the_code() -> set[str]:
    """Every label a gateway's or a worker's collectors can carry (most have no sample
    until first counted, so a scraped page does not show them all)."""
    gateway = GatewayMetrics()
    gateway.database()
    names = {"le"}  # histograms' buckets
    for registry in (gateway.registry, WorkerMetrics().registry):
        for collector in registry._collector_to_names:
            names.update(getattr(collector, "_labelnames", ()))
    return names


def labels_in(expr: str) -> set[str]:
    """Label names a PromQL expression groups by or selects on."""
    names = {n.strip() for group in GROUPING.findall(expr) for n in group.split(",")}
    names |= {m for selector in SELECTOR.findall(expr) for m in MATCHER.findall(selector)}
    return names - {""}


def test_no_metric_label_is_one_prometheus_sets_on_the_target() -> None:
    """An ``instance`` label of ours would be stored as ``exported_instance``."""
    ours = label_names_of_the_code()
    assert "upstream" in ours
    assert not ours & TARGET_LABELS


def test_dashboard_and_rules_name_only_labels_that_exist() -> None:
    known = label_names_of_the_code() | TARGET_LABELS
    named: dict[str, set[str]] = {}
    for panel in panels(json.loads(DASHBOARD.read_text())):
        for target in panel["targets"]:
            found = labels_in(target["expr"])
            found |= set(TEMPLATE.findall(target.get("legendFormat", "")))
            named[panel["title"]] = named.get(panel["title"], set()) | found
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            found = labels_in(rule["expr"])
            for text in rule.get("annotations", {}).values():
                found |= set(TEMPLATE.findall(text))
            named[rule["alert"]] = found
    assert {where: n - known for where, n in named.items() if n - known} == {}
    assert any("upstream" in n for n in named.values())


def test_dashboard_queries_use_the_datasource_variable() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    for panel in panels(dashboard):
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
