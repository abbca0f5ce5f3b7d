"""The instance API's routes: which template a path is, and where its session id sits.

Templates (never raw paths) label metrics, so their number stays bounded whatever callers
send. Paths match without regard to case, as Express's router matches them by default: an
instance acts on ``/API/Sessions/s1/restore`` as on ``/api/sessions/s1/restore``, so the
gateway must route it the same (the session id keeps its case; the action is lowercased).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

# Also used in paths the gateway builds, so never a dot segment ("." or "..").
SESSION_ID = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.:@-]{1,128}")

# (template, pattern); a ``sid`` group is the session id in the path.
_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (template, re.compile(pattern, re.IGNORECASE))
    for template, pattern in (
        ("/api/sessions", r"/api/sessions/?"),
        ("/api/sessions/{id}", r"/api/sessions/(?P<sid>[^/]+)/?"),
        ("/api/sessions/{id}/{action}", r"/api/sessions/(?P<sid>[^/]+)/(?P<action>[^/]+)/?"),
        ("/api/messages/{action}", r"/api/messages/(?:send|send-media|bulk-send|send-template)/?"),
        ("/api/messages/{id}/{action}", r"/api/messages/(?P<sid>[^/]+)/(?:status|validate)/?"),
        (
            "/api/internal/sessions/{id}/last-activity",
            r"/api/internal/sessions/(?P<sid>[^/]+)/last-activity/?",
        ),
        ("/health", r"/health/?"),
        ("/health/{check}", r"/health/(?:detailed|ready|live|metrics)/?"),
        ("/info", r"/info/?|/"),
        ("/remoteauth/*", r"/remoteauth(?:/.*)?"),
        ("/cleanup/*", r"/cleanup(?:/.*)?"),
    )
)

# Session actions that bring a session (back) to life: placed anew when no live instance
# holds the session.
REVIVING_ACTIONS = frozenset({"restore", "reconnect"})


@dataclass(frozen=True)
class Route:
    template: str
    session_id: str | None = None
    action: str | None = None


def classify(path: str) -> Route:
    """The template of ``path`` and the session id and action in it, if any."""
    return _known(path) if len(path) <= 200 else _classify(path)


def _classify(path: str) -> Route:
    for template, pattern in _ROUTES:
        match = pattern.fullmatch(path)
        if match:
            groups = match.groupdict()
            action = groups.get("action")
            return Route(template, groups.get("sid"), action.lower() if action else None)
    return Route("other")


# The paths of the sessions in use, a dozen regexes saved on each; the longest session path
# is under 200 characters, so a caller's long made-up paths cannot fill it with megabytes.
_known = lru_cache(maxsize=4096)(_classify)


def valid_session_id(session_id: str) -> bool:
    return SESSION_ID.fullmatch(session_id) is not None
