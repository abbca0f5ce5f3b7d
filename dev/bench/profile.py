"""Where a gateway process spends its time under load: py-spy samples, summed up.

``record`` samples one process (with py-spy, from the ``bench`` extra) while wrk keeps it
saturated; ``summary`` turns the samples into a Markdown table: the share of samples whose
innermost frame is in each part of the program, and the functions that hold the most.
Time spent in a system call counts for the Python function that made it (py-spy samples
Python frames only), so writes to sockets show as the functions that write.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

PARTS = (
    ("the gateway's code", re.compile(r"\((gateway/[^:]*)")),
    ("aiohttp (server: parsing, request and response objects, writing)", re.compile(r"aiohttp/")),
    ("the event loop (uvloop, asyncio)", re.compile(r"asyncio/|uvloop|\(<frozen runpy>")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("yarl, multidict, json and the rest", re.compile(r".")),
)


def py_spy() -> str | None:
    found = Path(sys.executable).with_name("py-spy")
    return str(found) if found.exists() else shutil.which("py-spy")


def record(pid: int, seconds: int, out: Path, load: Callable[[], object]) -> bool:
    """Sample ``pid`` for ``seconds`` while ``load()`` runs; whether samples were taken."""
    spy = py_spy()
    if spy is None:
        print("no profile: py-spy is not installed (pip install '.[bench]')", flush=True)
        return False
    argv = [spy, "record", "-p", str(pid), "-d", str(seconds), "-r", "500"]
    sampler = subprocess.Popen(
        [*argv, "--format", "raw", "--nonblocking", "-o", str(out)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    load()
    _, err = sampler.communicate()
    if sampler.returncode != 0 or not out.exists():
        print(f"no profile: py-spy failed ({err.decode(errors='replace').strip()[-200:]})")
        return False
    return True


def _function(frame: str) -> str:
    """``name (path:line)`` -> ``name (path)``."""
    return re.sub(r":\d+\)$", ")", frame)


def summary(raw: Path, top: int = 12) -> str:
    """The samples of a ``py-spy record --format raw`` file, as Markdown."""
    innermost: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        total += int(count)
        innermost[_function(stack.split(";")[-1])] += int(count)
    parts: Counter[str] = Counter()
    for frame, count in innermost.items():
        parts[next(name for name, pattern in PARTS if pattern.search(frame))] += count
    lines = [
        f"{total:,} samples. Share of samples by where the innermost Python frame was:",
        "",
        "| part | samples |",
        "|---|---:|",
        *(f"| {name} | {parts[name] / total:.0%} |" for name, _ in PARTS if parts[name]),
        "",
        "The functions holding the most samples themselves:",
        "",
        "| function | samples |",
        "|---|---:|",
        *(
            f"| `{frame.replace('|', '/')}` | {count / total:.1%} |"
            for frame, count in innermost.most_common(top)
        ),
    ]
    return "\n".join(lines)
