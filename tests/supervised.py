"""The project's own supervisor files, run under a real ``supervisord`` for tests.

``render`` copies ``deploy/supervisor/*.conf`` into a temp dir changing only paths (this
checkout and its Python in place of ``/opt/whatsapp-gateway``, a temp log dir), the user
(whoever runs the tests) and the environment (a Laravel ``.env`` and a TOML file of the
test's own). ``Supervisor`` starts ``supervisord`` on it the way Debian's package does (a main
file including ``conf.d/*.conf``), and talks to it as an operator would: ``supervisorctl``,
and its XML-RPC interface for polling states.
"""

from __future__ import annotations

import asyncio
import contextlib
import getpass
import json
import os
import re
import signal
import subprocess
import sys
import xmlrpc.client
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dev.ports import free_port
from tests.harness import ROOT

DEPLOY = ROOT / "deploy" / "supervisor"
INSTALL_DIR = "/opt/whatsapp-gateway"
INSTALL_PYTHON = f"{INSTALL_DIR}/.venv/bin/python"
LOG_DIR = "/var/log/whatsapp-gateway"
# Whatever the developer's shell says about instances, Redis or ports must not leak in.
LEAKY = ("WHATSAPP_", "REDIS_", "GATEWAY_", "LARAVEL_", "DEVRUN_", "MYSQL_", "DB_", "APP_NAME")
# Keys of a program section that render() may change; every other one stays as shipped.
RENDERED_KEYS = frozenset({"command", "directory", "user", "environment", "stdout_logfile"})


def render(text: str, *, logs: Path, environment: Mapping[str, str]) -> str:
    """One shipped conf file, for this checkout: paths, user and environment values only.

    ``environment`` replaces the values of those variables in every ``environment=`` line
    (a variable the line does not name is added to it).
    """

    def environment_line(match: re.Match[str]) -> str:
        line = match.group(0)
        for name, value in environment.items():
            pattern = rf'(?<=[=,]){re.escape(name)}="[^"]*"'
            entry = f'{name}="{value}"'
            line, found = re.subn(pattern, lambda _, entry=entry: entry, line)
            if not found:
                line += f",{entry}"
        return line

    text = text.replace(INSTALL_PYTHON, sys.executable)
    text = text.replace(INSTALL_DIR, str(ROOT))
    text = text.replace(LOG_DIR, str(logs))
    text = re.sub(r"^user=.*$", f"user={getpass.getuser()}", text, flags=re.M)
    return re.sub(r"^environment=.*$", environment_line, text, flags=re.M)


def main_conf(here: Path, port: int) -> str:
    """Debian's /etc/supervisor/supervisord.conf, with a TCP control port of the test's own."""
    return (
        "[supervisord]\n"
        f"logfile={here}/supervisord.log\n"
        f"pidfile={here}/supervisord.pid\n"
        f"childlogdir={here}/log\n"
        "nodaemon=true\n"
        "[inet_http_server]\n"
        f"port=127.0.0.1:{port}\n"
        "[rpcinterface:supervisor]\n"
        "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface\n"
        "[supervisorctl]\n"
        f"serverurl=http://127.0.0.1:{port}\n"
        "[include]\n"
        f"files={here}/conf.d/*.conf\n"
    )


@dataclass
class Supervisor:
    """A ``supervisord`` of the test's own, running the rendered project files."""

    here: Path
    environment: Mapping[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    seen_pids: set[int] = field(default_factory=set)

    @property
    def conf(self) -> Path:
        return self.here / "supervisord.conf"

    @property
    def logs(self) -> Path:
        return self.here / "log"

    def write(self) -> None:
        (self.here / "conf.d").mkdir(parents=True, exist_ok=True)
        self.logs.mkdir(exist_ok=True)
        self.conf.write_text(main_conf(self.here, self.port))
        for shipped in sorted(DEPLOY.glob("*.conf")):
            text = render(shipped.read_text(), logs=self.logs, environment=self.environment)
            (self.here / "conf.d" / shipped.name).write_text(text)

    def start(self) -> None:
        """Start supervisord (the files are written the first time)."""
        if not self.conf.exists():
            self.write()
        env = {k: v for k, v in os.environ.items() if not k.startswith(LEAKY)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "supervisor.supervisord", "-c", str(self.conf)],
            cwd=self.here,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    async def rpc(self, method: str, *args: Any) -> Any:
        """One XML-RPC call to supervisord (in a thread: the client blocks)."""

        def call() -> Any:
            proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{self.port}/RPC2")
            return getattr(proxy.supervisor, method)(*args)

        return await asyncio.to_thread(call)

    async def processes(self) -> dict[str, dict[str, Any]]:
        """Every process by name (``wa-gateway``, ``wa-workers_01``, ...); {} while down."""
        try:
            infos = await self.rpc("getAllProcessInfo")
        except (OSError, xmlrpc.client.Error):
            return {}
        self.seen_pids.update(i["pid"] for i in infos if i["pid"])
        return {i["name"]: i for i in infos}

    async def pids(self, prefix: str) -> dict[str, int]:
        """Live pids of the processes whose name starts with ``prefix``."""
        return {
            name: info["pid"]
            for name, info in (await self.processes()).items()
            if name.startswith(prefix) and info["pid"]
        }

    async def ctl(self, *args: str, timeout: float = 60) -> str:
        """``supervisorctl -c <conf> ARGS``, as an operator types it; returns its output."""
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "supervisor.supervisorctl",
            "-c",
            str(self.conf),
            *args,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
        return out.decode()

    def log(self, name: str) -> str:
        """What a program wrote (its stdout_logfile), or supervisord's own log."""
        path = self.here / "supervisord.log" if name == "supervisord" else self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def json_lines(self, name: str) -> list[dict[str, Any]]:
        """The JSON log lines of a program (other lines skipped)."""
        lines = []
        for line in self.log(name).splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def shutdown(self, timeout: float = 30) -> None:
        """SIGTERM supervisord (it stops its programs first) and wait for it."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            await asyncio.to_thread(self.proc.wait, timeout)
        if self.proc.poll() is not None:
            self.proc = None

    def kill_everything(self) -> None:
        """Last resort at teardown: SIGKILL supervisord and every process it ever ran."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for pid in self.seen_pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGKILL)
