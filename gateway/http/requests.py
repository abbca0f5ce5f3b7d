"""Request parsing: turn an incoming request into a ``Call`` the router and service act on.

Everything a caller can get wrong is caught here, before anything is forwarded: a request
target that is not a plain path, a path that reads two ways, a body that should be JSON
and is not, a session id outside the allowed alphabet, a workspace id that is not a short
string of ASCII digits. The path is made canonical once and that one string is routed and
forwarded.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Protocol
from urllib.parse import unquote

import orjson
from aiohttp import web
from yarl import URL

from gateway.decisions.paths import PATH_CHARS, BadPath, normalize
from gateway.decisions.route_table import Route, classify, valid_session_id
from gateway.http.errors import json_error
from gateway.http.headers import HOP_BY_HOP_RAW, RawHeaders, end_to_end, names_kept

ROUTE = web.RequestKey("route", str)
REQUEST_ID = web.RequestKey("request_id", str)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
# Headers of the caller's that the gateway sets itself on the way to an instance. A caller's
# X-Real-IP or Forwarded would let it name any address to the instance: X-Real-IP is the
# gateway's word (the peer), and Forwarded is left out (X-Forwarded-* say the same).
REPLACED = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"x-request-id",
        b"x-real-ip",
        b"forwarded",
    }
)
WORKSPACE_ID = re.compile(r"[0-9]{1,20}")
SESSION_ID_RULE = "session_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ - (not . or ..)"


class _Headers(Protocol):
    def get(self, name: str, default: None = None, /) -> str | None: ...


class Incoming(Protocol):
    """What the instance API reads of a request: an aiohttp ``web.Request``, or one the
    entry point read itself (``gateway.http.entrypoint.EntryRequest``)."""

    @property
    def method(self) -> str: ...
    @property
    def raw_path(self) -> str: ...
    @property
    def raw_headers(self) -> RawHeaders: ...
    @property
    def headers(self) -> _Headers: ...
    @property
    def content_type(self) -> str: ...
    @property
    def remote(self) -> str | None: ...
    @property
    def scheme(self) -> str: ...
    @property
    def host(self) -> str: ...
    async def read(self) -> bytes: ...
    def __getitem__(self, key: Any, /) -> Any: ...
    def __setitem__(self, key: Any, value: Any, /) -> None: ...
    def get(self, key: Any, default: Any = None, /) -> Any: ...


@dataclass
class Call:
    """One request as the gateway forwards it."""

    method: str
    path_qs: str
    headers: bytes  # header lines for the instance (see forwarded_headers)
    body: bytes
    route: Route
    session_id: str | None
    workspace_id: str | None
    payload: Any = field(default=None, repr=False)  # the JSON body, when read
    query: str = field(default="", repr=False)  # the query string, still percent-encoded

    @cached_property
    def api_key(self) -> str | None:
        """The caller's own key (body, else query), for the gateway's searches on its
        behalf; read only when a search needs it."""
        key = self.payload.get("api_key") if isinstance(self.payload, dict) else None
        if not isinstance(key, str) and self.query:
            key = URL.build(query_string=self.query, encoded=True).query.get("api_key")
        return key if isinstance(key, str) and key else None  # a non-string is no key


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.response = json_error(400, message)


def _json_body(request: Incoming, body: bytes) -> Any:
    if request.method not in BODY_METHODS or not body.strip():
        return None
    ctype = request.content_type
    if ctype != "application/json" and not ctype.endswith("+json"):
        return None  # binary, a form or a file upload: forwarded as is
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass  # orjson is stricter than the instances: a lone surrogate, 1e999, a huge int
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest("Request body is not valid JSON") from None


def _field(payload: Any, query: str, name: str) -> str | None:
    """``name`` from the JSON body, else from the query string (still percent-encoded)."""
    value = payload.get(name) if isinstance(payload, dict) else None
    if value is None and query and (name in query or "%" in query):  # else surely not there
        value = URL.build(query_string=query, encoded=True).query.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name} must be a string or a number")
    return str(value)


def forwarded_headers(request: Incoming, request_id: str) -> bytes:
    """The caller's end-to-end headers plus the X-Forwarded-* set and the request id, as
    header lines ready to go out."""
    lines, prior = _end_to_end_lines(request.raw_headers)
    peer = (request.remote or "").encode("ascii", "replace")
    forwarded_for = prior + b", " + peer if prior else peer
    lines.append(
        b"X-Forwarded-For: %s\r\nX-Forwarded-Proto: %s\r\nX-Forwarded-Host: %s\r\n"
        b"X-Real-IP: %s\r\nX-Request-ID: %s\r\n"
        % (
            forwarded_for,
            request.scheme.encode("ascii"),
            request.host.encode("utf-8", "surrogateescape"),
            peer,
            request_id.encode("utf-8", "surrogateescape"),
        )
    )
    return b"".join(lines)


def _end_to_end_lines(raw: RawHeaders) -> tuple[list[bytes], bytes | None]:
    """``end_to_end``'s headers as lines, but for those the gateway sets itself, in one
    pass; and the caller's first X-Forwarded-For."""
    lines: list[bytes] = []
    prior: bytes | None = None
    options = b""
    for name, value in raw:
        lowered = name.lower()
        if lowered in HOP_BY_HOP_RAW:
            if lowered == b"connection":
                options += b"," + value
        elif lowered in REPLACED:
            if lowered == b"x-forwarded-for" and prior is None:
                prior = value
        else:
            lines.append(b"%s: %s\r\n" % (name, value))
    if options and names_kept(options):  # rare: a header the caller made hop-by-hop
        return _end_to_end_lines(end_to_end(raw))
    return lines, prior


def request_id(request: Incoming) -> str:
    """The caller's X-Request-ID, or a new one, so a request can be followed end to end.

    A new one is a random prefix per process and a counter: unique, with no random draw
    (a system call) per request.
    """
    return request.headers.get("X-Request-ID") or f"{_id_prefix}{next(_ids):011x}"


def _new_id_prefix() -> None:
    global _id_prefix, _ids
    _id_prefix, _ids = os.urandom(5).hex(), itertools.count(1)


_id_prefix, _ids = "", itertools.count(1)
_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)  # a forked process gets its own


def _path_qs(request: Incoming) -> str:
    """The canonical path and the query string as sent (the target is a path: middlewares)."""
    path, sep, query = request.raw_path.partition("?")
    if not PATH_CHARS.fullmatch(query):
        raise BadRequest("The query string must be printable ASCII; percent-encode the rest")
    try:
        return normalize(path) + sep + query
    except BadPath as exc:
        raise BadRequest(str(exc)) from None


def _path_session(route: Route) -> str | None:
    """The session id in the path, decoded; it must name one session, not a path."""
    if route.session_id is None:
        return None
    try:
        session_id = unquote(route.session_id, errors="strict")
    except UnicodeDecodeError:
        raise BadRequest(SESSION_ID_RULE) from None
    if "/" in session_id:
        raise BadRequest(SESSION_ID_RULE)
    return session_id


async def read_call(request: Incoming) -> Call:
    """Parse and check a request; raises ``BadRequest`` with the answer to give."""
    path_qs = _path_qs(request)
    route = classify(path_qs.partition("?")[0])
    request[ROUTE] = route.template
    body = await request.read()
    payload = _json_body(request, body)
    query = path_qs.partition("?")[2].partition("#")[0]  # a fragment is no field
    session_id = _path_session(route) or _field(payload, query, "session_id")
    if session_id is not None and not valid_session_id(session_id):
        raise BadRequest(SESSION_ID_RULE)
    workspace_id = _field(payload, query, "workspace_id")
    if workspace_id is not None and not WORKSPACE_ID.fullmatch(workspace_id):
        raise BadRequest("workspace_id must be 1-20 ASCII digits")
    return Call(
        method=request.method,
        path_qs=path_qs,
        headers=forwarded_headers(request, request[REQUEST_ID]),
        body=body,
        route=route,
        session_id=session_id,
        workspace_id=workspace_id,
        payload=payload,
        query=query,
    )
