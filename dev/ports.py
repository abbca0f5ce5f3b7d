"""Ports for servers started later, that no outgoing connection can take in the meantime.

Asking the kernel for port 0 and closing the socket hands out an *ephemeral* port: until
the server binds it, any outgoing connection on the machine may be given the same port as
its source, and the server then fails with "address already in use". Ports below the
ephemeral range are never picked as source ports, so they stay free until someone binds
them on purpose. Each process walks its own stretch of that range and never hands out a
port twice: test processes run side by side (``PYTEST_XDIST_WORKER``) get stretches that
do not overlap, any other process one seeded by its pid, so two runs rarely meet.
"""

from __future__ import annotations

import itertools
import os
import socket
from collections.abc import Iterator
from pathlib import Path

_LOWEST = 10_000  # below this live well-known services (MySQL, Redis, the default instances…)


def _ephemeral_floor() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32_768  # Linux's default


def _candidates() -> Iterator[int]:
    floor = _ephemeral_floor()
    if floor - _LOWEST < 1_000:  # an unusual range: fall back to the kernel's choice
        while True:
            yield 0
    span = range(_LOWEST, floor)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "").removeprefix("gw")
    if worker.isdigit():  # one disjoint slice per test process, seeded inside it by the pid
        count = max(int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")), int(worker) + 1)
        width = len(span) // count
        span = range(_LOWEST + int(worker) * width, _LOWEST + (int(worker) + 1) * width)
    start = (os.getpid() * 7_919) % len(span)
    for offset in itertools.cycle(range(len(span))):
        yield span[(start + offset) % len(span)]


_ports = _candidates()


def _bindable(port: int) -> int | None:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return None
        return int(s.getsockname()[1])


def free_port() -> int:
    """A loopback port that is free now and outside the kernel's ephemeral range."""
    for candidate in _ports:
        port = _bindable(candidate)
        if port is not None:
            return port
    raise RuntimeError("no free port")  # pragma: no cover - the generator never ends
