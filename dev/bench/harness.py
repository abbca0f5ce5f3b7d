"""What the benchmarks here share: tools, cores, processes and the report file."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
KEY = "bench-key"  # the instances' api key, as the gateway is told
SBIN = "/usr/sbin:/sbin"


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
    processes: tuple[int, ...]  # the gateway with --processes N

    @classmethod
    def for_cores(cls, cores: Sequence[int], processes: int = 2) -> Layout:
        cores = tuple(sorted(cores))
        if len(cores) >= 2 + processes:
            return cls(cores[:1], cores[1:2], cores[2:3], cores[2 : 2 + processes])
        if len(cores) >= 3:
            return cls(cores[:1], cores[1:2], cores[2:3], cores)
        if len(cores) == 2:
            return cls(cores[:1], cores[:1], cores[1:], cores)
        return cls(cores, cores, cores, cores)

    def describe(self) -> str:
        def name(cores: tuple[int, ...]) -> str:
            return ("cores " if len(cores) > 1 else "core ") + ",".join(map(str, cores))

        return (
            f"the proxy under test (gateway or nginx) on {name(self.proxy)}; "
            f"wrk on {name(self.load)}; the four instances on {name(self.instances)}; "
            f"the gateway with several processes on {name(self.processes)}"
        )


def pinned(cores: tuple[int, ...], argv: Sequence[str]) -> list[str]:
    return ["taskset", "-c", ",".join(map(str, cores)), *argv]


def wait_http(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
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
            raise SystemExit(f"{url} did not answer within {timeout:g} s:\n{tail(log)}")
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


def write(doc: Path, text: str, section: str) -> None:
    """Replace the generated ``section`` of ``doc`` (between its markers) with ``text``."""
    start, end = f"<!-- make bench: {section} -->", f"<!-- make bench: {section} end -->"
    current = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if start not in current:
        current = f"{current.rstrip()}\n\n{start}\n{end}\n"
    before, _, rest = current.partition(start)
    _, _, after = rest.partition(end)
    doc.write_text(f"{before}{start}\n{text}\n{end}{after}")
