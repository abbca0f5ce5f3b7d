"""Request parsing: turn an incoming request into a ``Call`` the router and service act on.

Everything a caller can get wrong is caught here, before anything is forwarded: a body
that should be JSON and is not, a session id outside the allowed alphabet, a workspace
id that is not a whole number.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from multidict import CIMultiDict

from gateway.decisions.routes import Route, classify, valid_session_id
from gateway.errors import json_error
from gateway.headers import end_to_end

ROUTE = web.RequestKey("route", str)
REQUEST_ID = web.RequestKey("request_id", str)
BODY_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})


@dataclass(frozen=True)
class Call:
    """One request as the gateway forwards it."""

    method: str
    path_qs: str
    headers: CIMultiDict[str]
    body: bytes
    route: Route
    session_id: str | None
    workspace_id: str | None


class BadRequest(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.response = json_error(400, message)


def _json_body(request: web.Request, body: bytes) -> Any:
    if request.method not in BODY_METHODS or not body.strip():
        return None
    ctype = request.content_type
    if ctype not in ("application/json", "application/octet-stream") and not ctype.endswith(
        "+json"
    ):
        return None  # a form or file upload: forwarded as is
    try:
        return json.loads(body)
    except ValueError:
        raise BadRequest("Request body is not valid JSON") from None


def _field(payload: Any, request: web.Request, name: str) -> str | None:
    value = payload.get(name) if isinstance(payload, dict) else None
    if value is None:
        value = request.query.get(name)
    if value is None or value == "":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise BadRequest(f"{name} must be a string or a number")
    return str(value)


def forwarded_headers(request: web.Request, request_id: str) -> CIMultiDict[str]:
    """The caller's end-to-end headers plus the X-Forwarded-* set and the request id."""
    headers = end_to_end(request.headers)
    peer = request.remote or ""
    prior = headers.get("X-Forwarded-For")
    headers["X-Forwarded-For"] = f"{prior}, {peer}" if prior else peer
    headers["X-Forwarded-Proto"] = request.scheme
    headers["X-Forwarded-Host"] = request.host
    headers["X-Request-ID"] = request_id
    return headers


def request_id(request: web.Request) -> str:
    """The caller's X-Request-ID, or a new one, so a request can be followed end to end."""
    return request.headers.get("X-Request-ID") or uuid.uuid4().hex


async def read_call(request: web.Request) -> Call:
    """Parse and check a request; raises ``BadRequest`` with the answer to give."""
    route = classify(request.path)
    request[ROUTE] = route.template
    body = await request.read()
    payload = _json_body(request, body)
    session_id = route.session_id or _field(payload, request, "session_id")
    if session_id is not None and not valid_session_id(session_id):
        raise BadRequest("session_id must be 1-128 characters of A-Z a-z 0-9 _ . : @ -")
    workspace_id = _field(payload, request, "workspace_id")
    if workspace_id is not None and not workspace_id.lstrip("-").isdigit():
        raise BadRequest("workspace_id must be a whole number")
    return Call(
        method=request.method,
        path_qs=request.raw_path,
        headers=forwarded_headers(request, request[REQUEST_ID]),
        body=body,
        route=route,
        session_id=session_id,
        workspace_id=workspace_id,
    )
