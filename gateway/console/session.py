"""Console sessions: a random id in an ``HttpOnly``, ``SameSite=Strict`` cookie, its state
in Redis (so every gateway process sharing the Redis knows it), a CSRF token per session.

Redis holds only a hash of the cookie's id, so a copy of Redis logs no one in. A session
remembers a fingerprint of the admin token it was opened with: a new token (a reload) ends
every session. Failed logins are counted per client address; past the limit a login is
refused for a while, whatever the token. The token itself is never stored or logged.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from aiohttp import web
from redis.exceptions import RedisError

from gateway.http.errors import json_error
from gateway.lifecycle.process import GATEWAY, Gateway

COOKIE = "wa_console"
CSRF_HEADER = "X-CSRF-Token"
SESSION_TTL = 8 * 3600  # seconds a session lasts from its login
LOGIN_LIMIT = 10  # failed logins per client address ...
LOGIN_WINDOW = 300  # ... within this many seconds, before logins are refused
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
REDIS_ERRORS = (RedisError, OSError, TimeoutError)


class ConsoleError(Exception):
    """A refusal; carries the JSON answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.response = json_error(status, message)


@dataclass(frozen=True, slots=True)
class Session:
    csrf: str
    expires: float


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def token_fingerprint(token: str) -> str:
    """Which admin token a session was opened with, without keeping the token."""
    return hmac.new(b"wa-gateway console", token.encode(), hashlib.sha256).hexdigest()[:32]


def _key(gw: Gateway, kind: str, name: str) -> str:
    return f"{gw.settings.key_prefix}console:{kind}:{name}"


def secure(request: web.Request) -> bool:
    """Served over https, here or at a proxy in front (``X-Forwarded-Proto``)."""
    forwarded = request.headers.get("X-Forwarded-Proto", "").split(",")[0].strip().lower()
    return request.secure or forwarded == "https"


def same_origin(request: web.Request, *, required: bool = True) -> bool:
    """The request's ``Origin`` names this host (as the browser reached it); an absent one
    passes only when not ``required`` (a login from a script, which has no cookie yet)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return not required
    parts = urlsplit(origin)
    hosts = {request.host, *request.headers.getall("X-Forwarded-Host", [])}
    return parts.scheme in ("http", "https") and parts.netloc in hosts


async def login(request: web.Request, gw: Gateway, token: str) -> tuple[str, Session]:
    """Open a session for the right admin token: its cookie value and state."""
    client = _digest(request.remote or "unknown")
    redis = gw.pins.link.redis
    failures_key = _key(gw, "login-failures", client)
    try:
        failures = int(await redis.get(failures_key) or 0)
        if failures >= LOGIN_LIMIT:
            raise ConsoleError(429, "Too many wrong tokens from this address: wait, then log in")
        admin_token = gw.settings.admin_token
        if not hmac.compare_digest(
            token.encode("utf-8", "surrogateescape"), admin_token.encode("utf-8")
        ):
            async with redis.pipeline(transaction=True) as pipe:
                await pipe.incr(failures_key).expire(failures_key, LOGIN_WINDOW).execute()
            raise ConsoleError(401, "Wrong admin token")
        sid, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        expires = time.time() + SESSION_TTL
        key = _key(gw, "session", _digest(sid))
        fields = {"csrf": csrf, "expires": repr(expires), "token": token_fingerprint(admin_token)}
        async with redis.pipeline(transaction=True) as pipe:
            await pipe.hset(key, mapping=fields).expire(key, SESSION_TTL).execute()
    except REDIS_ERRORS:
        raise ConsoleError(503, "Redis does not answer: no session can be opened") from None
    return sid, Session(csrf, expires)


async def current(request: web.Request, gw: Gateway) -> Session | None:
    """The session the request's cookie names, if it is still open for this token."""
    sid = request.cookies.get(COOKIE)
    if not sid or len(sid) > 100:
        return None
    try:
        row = await gw.pins.link.redis.hgetall(_key(gw, "session", _digest(sid)))
    except REDIS_ERRORS:
        raise ConsoleError(503, "Redis does not answer: the session cannot be checked") from None
    fields = {k.decode(): v.decode() for k, v in row.items()}
    if not fields or fields.get("token") != token_fingerprint(gw.settings.admin_token):
        return None
    return Session(fields["csrf"], float(fields.get("expires") or 0))


async def logout(request: web.Request, gw: Gateway) -> None:
    sid = request.cookies.get(COOKIE)
    if sid and len(sid) <= 100:
        try:
            await gw.pins.link.redis.delete(_key(gw, "session", _digest(sid)))
        except REDIS_ERRORS:
            raise ConsoleError(503, "Redis does not answer: the session is still open") from None


def check_change(request: web.Request, session: Session) -> None:
    """A state-changing call must come from this origin and carry the session's CSRF token."""
    if request.method in SAFE_METHODS:
        return
    if not same_origin(request):
        raise ConsoleError(403, "Cross-origin request refused (Origin is not this console)")
    given = request.headers.get(CSRF_HEADER, "")
    if not hmac.compare_digest(given.encode("utf-8", "surrogateescape"), session.csrf.encode()):
        raise ConsoleError(403, f"Missing or wrong CSRF token ({CSRF_HEADER})")


def set_cookie(response: web.StreamResponse, request: web.Request, sid: str) -> None:
    response.set_cookie(
        COOKIE,
        sid,
        max_age=SESSION_TTL,
        path="/",
        httponly=True,
        samesite="Strict",
        secure=secure(request),
    )


def clear_cookie(response: web.StreamResponse, request: web.Request) -> None:
    response.del_cookie(COOKIE, path="/", httponly=True, samesite="Strict", secure=secure(request))


async def admin_gate(request: web.Request) -> web.Response | None:
    """The console's way into the admin API: a session cookie, and for a change the CSRF
    token and this origin. None lets the call through."""
    gw = request.app[GATEWAY]
    try:
        session = await current(request, gw)
        if session is None:
            message = "Missing or wrong admin token (Authorization: Bearer) or console session"
            return json_error(401, message)
        check_change(request, session)
    except ConsoleError as exc:
        return exc.response
    return None
