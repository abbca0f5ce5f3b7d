"""Open files: as many as the system lets this process have.

Every proxied request holds two sockets (the caller's and the instance's), and four instances
at 256 connections each plus the callers pass the usual soft limit of 1,024: past it, accept()
and connect() fail with "too many open files". The hard limit is the operator's (systemd's
``LimitNOFILE``, supervisord's ``minfds``); the soft one is raised to it at start-up.
"""

from __future__ import annotations

import contextlib
import resource

WANTED = 65536


def raise_open_files() -> int:
    """Raise the soft limit on open files towards the hard one; the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = WANTED if hard == resource.RLIM_INFINITY else min(WANTED, hard)
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        return target
    return soft
