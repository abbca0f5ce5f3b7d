"""The admin API from a shell: ``python -m gateway instances|distribution|drain N|...``.

The commands talk to the running gateway over HTTP rather than to Redis, so they see
exactly what the gateway sees (health, counts) and their changes reach every process the
same way as an admin call's.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from typing import Any

from gateway.shared.settings import Settings

TIMEOUT = 30.0  # a reconciliation waits on every instance's session list


class AdminCallFailed(Exception):
    """The gateway could not be reached or refused the call; the message is one line."""


def base_url(settings: Settings) -> str:
    """Where the running gateway listens; a wildcard bind is reached over loopback."""
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "") else settings.host
    if ":" in host:
        host = "[::1]" if host == "::" else f"[{host}]"
    return f"http://{host}:{settings.port}"


def call(settings: Settings, method: str, path: str) -> dict[str, Any]:
    """One admin call; raises ``AdminCallFailed`` with a line fit for the operator."""
    if not settings.admin_token:
        raise AdminCallFailed("no admin token configured (set GATEWAY_ADMIN_TOKEN)")
    url = base_url(settings) + path
    request = urllib.request.Request(
        url, method=method, headers={"Authorization": f"Bearer {settings.admin_token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise AdminCallFailed(f"{method} {url}: {exc.code} {_error_of(exc.read())}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminCallFailed(f"gateway not reachable at {url}: {reason}") from None
    except ValueError:
        raise AdminCallFailed(f"{method} {url}: the answer is not JSON") from None


def _error_of(body: bytes) -> str:
    try:
        return str(json.loads(body)["error"])
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace").strip()[:200]


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned columns, two spaces apart; None shows as ``-``, booleans as yes/no."""
    cells = [list(headers), *([_cell(v) for v in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    return "\n".join(
        "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells
    )


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def show_instances(answer: dict[str, Any]) -> str:
    keys = ("index", "url", "up", "draining", "active", "last_check", "last_error")
    rows = [[i[key] for key in keys] for i in answer["instances"]]
    return table(("#", "instance", "up", "draining", "active", "last check", "last error"), rows)


def percent(fraction: float, sign: bool = False) -> str:
    """``0.333`` as ``33 %`` (``+33 %`` with ``sign``), the way the ±20 % rule is written."""
    whole = round(fraction * 100)
    return f"{whole:+d} %" if sign and whole else f"{whole} %"


def show_distribution(answer: dict[str, Any]) -> str:
    """Sessions per instance against the mean, the spread the ±20 % rule judges, and where
    the next session goes: enough to see why a fleet is not balanced."""
    database = answer.get("database")
    headers = ["#", "instance", "active", "vs mean", "new sessions", "pinned"]
    keys = ("index", "url", "sessions", "against_mean", "new_sessions", "pinned")
    rows = [[i[key] for key in keys] for i in answer["instances"]]
    for row in rows:
        row[3] = percent(row[3], sign=True)
    rows.append(["", "total", answer["total"], "", "", answer["pinned"]])
    lines = []
    if database is not None and database["error"] is None:
        headers.append("in database")
        for row, instance in zip(rows, answer["instances"], strict=False):
            row.append(instance["database"])
        rows[-1].append(database["total"])
        lines.append(
            f"in database on no instance: {database['no_instance']},"
            f" on an unknown instance: {database['unknown_instance']}"
        )
    elif database is not None:
        lines.append(database["error"])
    limit = percent(answer["balance_limit"])
    verdict = "balanced" if answer["balanced"] else "not balanced"
    lines.append(
        f"mean: {answer['mean']:.1f} active per instance;"
        f" spread (max - min) / mean: {percent(answer['spread'])}, {verdict} (the rule: under"
        f" {limit})"
    )
    following = answer["next"]
    if following is None:
        lines.append("next session: none can take it (every instance is down, draining or full)")
    else:
        lines.append(
            f"next session goes to: {following['index']} {following['url']}"
            " (the fewest active sessions of those taking new ones)"
        )
    return "\n".join([table(headers, rows), *lines])


def show_draining(answer: dict[str, Any]) -> str:
    where = f"instance {answer['index']} ({answer['url']})"
    if answer["draining"]:
        kept = f"keeps its {answer['active']} active session(s)"
        return f"{where} is draining: it {kept} and gets no new ones"
    return f"{where} takes new sessions again"


def show_corrections(answer: dict[str, Any]) -> str:
    lines = []
    if answer["corrections"]:
        rows = [(c["kind"], c["session_id"], c["from"], c["to"]) for c in answer["corrections"]]
        lines.append(table(("kind", "session", "from", "to"), rows))
    else:
        lines.append("no corrections: every pin was right")
    if answer["instances_unanswered"]:
        unanswered = ", ".join(answer["instances_unanswered"])
        lines.append(f"not listed (pins of their sessions kept): {unanswered}")
    return "\n".join(lines)


# command -> (method, path template, printer)
COMMANDS: dict[str, tuple[str, str, Callable[[dict[str, Any]], str]]] = {
    "instances": ("GET", "/gateway/instances", show_instances),
    "distribution": ("GET", "/gateway/distribution", show_distribution),
    "drain": ("POST", "/gateway/instances/{index}/drain", show_draining),
    "undrain": ("POST", "/gateway/instances/{index}/undrain", show_draining),
    "reconcile": ("POST", "/gateway/reconcile", show_corrections),
}


def run(settings: Settings, command: str, index: int | None = None) -> str:
    """Run one admin command against the running gateway; the text to print."""
    method, path, show = COMMANDS[command]
    return show(call(settings, method, path.format(index=index)))
