"""What an incoming event says: its name, its session, and which instance sent it. Pure.

The body is whatever the instance signed; nothing here may fail on it. An event whose
``data.session_id`` is missing or not a valid session id has no session: it is delivered
in the shared lane, in receive order, and moves no pin.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from gateway.decisions.route_table import valid_session_id

SHARED_LANE = "*"  # not a session id character, so never a session's lane

# Events that show the session lives on the instance that sent them.
PINNING = frozenset(
    {
        "qr_code_generated",
        "session_authenticated",
        "session_ready",
        "message_received",
        "message_sent",
        "message_status_updated",
        "message_delivered",
        "message_read",
    }
)
# Every event the instances send; any other name is counted as "other" in metrics.
KNOWN = PINNING | {
    "session_disconnected",
    "session_error",
    "typing_indicator",
    "chat_state_updated",
}

LOOPBACK_ALIASES = {"localhost": "127.0.0.1"}


@dataclass(frozen=True, slots=True)
class Event:
    name: str | None
    session_id: str | None

    @property
    def lane(self) -> str:
        """The delivery lane: events of one lane reach the backend one at a time, in order."""
        return self.session_id or SHARED_LANE

    @property
    def label(self) -> str:
        """The event name for metrics: a known name, or ``other``."""
        return self.name if self.name in KNOWN else "other"

    @property
    def pins(self) -> bool:
        return self.session_id is not None and self.name in PINNING


def parse(body: bytes) -> Event:
    """``{"event": name, "data": {"session_id": ...}}``, or as much of it as is there."""
    try:
        payload: Any = json.loads(body)
    except (ValueError, RecursionError):
        return Event(None, None)
    if not isinstance(payload, dict):
        return Event(None, None)
    name = payload.get("event")
    data = payload.get("data")
    session_id = data.get("session_id") if isinstance(data, dict) else None
    return Event(
        name if isinstance(name, str) else None,
        session_id if isinstance(session_id, str) and valid_session_id(session_id) else None,
    )


def _normal(url: str) -> tuple[str, str, int | None, str] | None:
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    if not parts.scheme or not host:
        return None
    return parts.scheme.lower(), LOOPBACK_ALIASES.get(host, host), port, parts.path.rstrip("/")


def match_instance(header: str | None, instances: Sequence[str]) -> str | None:
    """The configured instance ``X-Instance-Url`` names, or ``None`` for an unknown one.

    Scheme and host case, a trailing slash and ``localhost`` for ``127.0.0.1`` are not
    differences; the port must match.
    """
    if not header:
        return None
    wanted = _normal(header)
    if wanted is None:
        return None
    return next((url for url in instances if _normal(url) == wanted), None)


def same_place(a: str | None, b: str | None) -> bool:
    """Whether two base URLs name one server, compared as :func:`match_instance` does."""
    if not a or not b:
        return False
    left = _normal(a)
    return left is not None and left == _normal(b)


def sender(header: str | None, instances: Sequence[str]) -> str:
    """Who an event says it is from, in one spelling; ``""`` when it does not say.

    The configured instance ``X-Instance-Url`` names, else the header normalised as
    :func:`match_instance` compares it (or case-folded, when it is not a URL). The header is
    not signed: this tells an instance's retry of an event from the same bytes sent by
    another instance, and decides nothing else.
    """
    url = match_instance(header, instances)
    if url is not None:
        return url
    if not header:
        return ""
    normal = _normal(header)
    if normal is None:
        return header.strip().casefold()
    scheme, host, port, path = normal
    return f"{scheme}://{host}{'' if port is None else f':{port}'}{path}"
