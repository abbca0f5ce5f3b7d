"""A stand-in WhatsApp instance: the Node instances' HTTP API, with sessions in memory.

``make run``, the tests and the benchmarks need instances without browsers or phones. This
one answers every route of ``whatsapp-instance-api.md`` with the same shapes and errors
(``401`` bad key, ``404 Session not found``, ``400 Session not connected``), so the gateway
cannot tell it from the real thing. Knobs make it slow (``latency``), flaky (``error_rate``)
or slow to pair (``connect_delay``). With ``LARAVEL_URL`` and ``HMAC_SECRET`` it reports its
events as the instances do (``dev.webhook_sink``): ``qr_code_generated``, ``session_authenticated``
and ``session_ready`` when a session pairs, ``message_sent`` for each message,
``session_disconnected`` on a delete. With ``--restore`` it also restores, at start-up, the
sessions ``GET {LARAVEL_URL}/api/whatsapp/accounts/active`` names, as the instances do after a
restart. Run it with ``python -m dev.simulator --port 3001``.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import logging
import os
import random
import resource
import secrets
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, NoReturn

import aiohttp
from aiohttp import web

from dev.serving import hmac_secret, serve
from dev.webhook_sink import USER_AGENT, Reporter
from gateway.shared.tasks import cancel_and_wait

log = logging.getLogger("dev.simulator")

QR_SCANNING = "qr_scanning"
AUTHENTICATED = "authenticated"
CONNECTED = "connected"
MAX_BODY = 50 * 1024**2  # express.json's limit on the real instances

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulated instance behaves; fixed for the life of the app."""

    api_key: str | None = None  # None: no key check
    connect_delay: float = 1.0  # seconds a new session waits before it is connected
    latency: float = 0.0  # seconds added to every response
    error_rate: float = 0.0  # fraction of API requests answered 500 (never /health)
    public_url: str = "http://localhost:3001"  # own base URL, shown by /info
    laravel_url: str | None = None  # where events are reported; None: not reported
    hmac_secret: str = ""  # signs the events
    # At start-up, ask LARAVEL_URL which sessions to restore and restore them, as the
    # instances' AccountRestoration does (GET /api/whatsapp/accounts/active, X-API-Key).
    restore_on_start: bool = False

    def __post_init__(self) -> None:
        if self.connect_delay < 0 or self.latency < 0:
            raise ValueError("connect_delay and latency must be >= 0")
        if not 0 <= self.error_rate <= 1:
            raise ValueError("error_rate must be between 0 and 1")
        if self.laravel_url and not self.hmac_secret:
            raise ValueError("events to LARAVEL_URL are signed: set HMAC_SECRET")


@dataclass
class Session:
    """One simulated WhatsApp session; its status is derived, see :func:`status_at`."""

    session_id: str
    workspace_id: int | None
    account_id: int | None
    created_at: float  # unix time the current pairing began (creation, restore, reconnect)
    restored: bool = False  # restored sessions skip the QR: authenticated, then connected
    last_activity: float = field(default_factory=time.time)
    metadata: dict[str, Any] = field(default_factory=dict)
    messages_sent: int = 0


class ApiError(Exception):
    """An error answer, raised anywhere in a handler and rendered by the middleware."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.body = {"error": error}


CONFIG = web.AppKey("config", SimulatorConfig)
SESSIONS = web.AppKey("sessions", dict[str, Session])
STARTED = web.AppKey("started", float)  # time.monotonic() at creation, for uptime
REPORTER = web.AppKey("reporter", Reporter)  # only when events are reported
ROUTE_WORDS = web.AppKey("route_words", frozenset)  # the fixed segments of the routes' paths
BODY = web.RequestKey("body", dict[str, Any])


def status_at(session: Session, connect_delay: float, now: float) -> str:
    """The session's status at ``now``: pairing until ``connect_delay`` has passed.

    Deriving it instead of flipping it from a timer keeps the simulator free of background
    tasks and makes the status a function of the clock alone.
    """
    if now >= session.created_at + connect_delay:
        return CONNECTED
    return AUTHENTICATED if session.restored else QR_SCANNING


def fake_phone(session_id: str) -> str:
    """A deterministic Indonesian-looking number, so a session keeps it across restarts."""
    digest = int.from_bytes(hashlib.sha256(session_id.encode()).digest()[:8], "big")
    return f"628{digest % 10**9:09d}"


def _iso(ts: float) -> str:
    """Unix time as JavaScript's ``Date.toISOString()`` writes it."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")[:-6] + "Z"


def _qr_code(session_id: str) -> str:
    return f"2@{secrets.token_urlsafe(32)},{session_id},simulated"


def _view(session: Session, config: SimulatorConfig, now: float) -> dict[str, Any]:
    """The fields every session answer shares."""
    status = status_at(session, config.connect_delay, now)
    connected = status == CONNECTED
    return {
        "session_id": session.session_id,
        "workspace_id": session.workspace_id,
        "status": status,
        "phone_number": fake_phone(session.session_id) if connected else None,
        "connected_at": _iso(session.created_at + config.connect_delay) if connected else None,
    }


def _fail(status: int, error: str) -> NoReturn:
    raise ApiError(status, error)


def _held(request: web.Request, session_id: str) -> Session:
    """The session this instance holds, or the 404 that tells the gateway to look elsewhere."""
    session = request.app[SESSIONS].get(session_id)
    if session is None:
        _fail(404, "Session not found")
    return session


def _path_session(request: web.Request) -> Session:
    return _held(request, request.match_info["session_id"])


def _optional_int(body: dict[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None or (isinstance(value, int) and not isinstance(value, bool)):
        return value
    if isinstance(value, str) and value.isdigit():
        return int(value)
    _fail(400, f"{name} must be an integer")


def _new_session(request: web.Request, session_id: str, now: float, *, restored: bool) -> Session:
    body = request[BODY]
    session = Session(
        session_id=session_id,
        workspace_id=_optional_int(body, "workspace_id"),
        account_id=_optional_int(body, "account_id"),
        created_at=now,
        restored=restored,
        last_activity=now,
    )
    request.app[SESSIONS][session_id] = session
    return session


# --- events --------------------------------------------------------------------------------


def _report(app: web.Application, event: str, session: Session, **data: Any) -> None:
    """Report an event of ``session``, when this instance reports events."""
    reporter = app.get(REPORTER)
    if reporter is not None:
        payload = {"session_id": session.session_id, "workspace_id": session.workspace_id}
        reporter.report(event, payload | data)


def _pairing(app: web.Application, session: Session, qr_code: str | None = None) -> None:
    """A pairing began: its QR code (a restore has none), then ``session_ready`` on time."""
    if REPORTER not in app:
        return
    if qr_code is None:
        _report(app, "session_authenticated", session, status=AUTHENTICATED)
    else:
        _report(app, "qr_code_generated", session, qr_code=qr_code)
    began = session.created_at

    def ready() -> None:
        if app[SESSIONS].get(session.session_id) is session and session.created_at == began:
            phone = fake_phone(session.session_id)
            _report(app, "session_ready", session, status=CONNECTED, phone_number=phone)

    asyncio.get_running_loop().call_later(app[CONFIG].connect_delay, ready)


async def _reporting(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    restoring: asyncio.Task[None] | None = None
    if config.laravel_url:
        app[REPORTER] = Reporter(config.laravel_url, config.hmac_secret, config.public_url)
        await app[REPORTER].start()
        if config.restore_on_start:
            restoring = asyncio.create_task(_restore_active(app, config.laravel_url))
    yield
    if config.laravel_url:
        await cancel_and_wait([restoring])
        await app[REPORTER].close()


async def _restore_active(app: web.Application, laravel_url: str) -> None:
    """Restore what the backend says was active (``AccountRestoration.restoreAllSessions``):
    no answer, or one that is not a list of sessions, restores none."""
    config = app[CONFIG]
    headers = {"Content-Type": "application/json", "User-Agent": USER_AGENT}
    if config.api_key:
        headers["X-API-Key"] = config.api_key
    url = laravel_url.rstrip("/") + "/api/whatsapp/accounts/active"
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as http,
            http.get(url, headers=headers) as resp,
        ):
            answer = await resp.json(content_type=None) if resp.status == 200 else {}
    except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
        log.warning("could not fetch the sessions to restore (%s)", type(exc).__name__)
        return
    listed = answer.get("sessions") if isinstance(answer, dict) else None
    restored = 0
    for entry in listed if isinstance(listed, list) else []:
        session_id = entry.get("session_id") if isinstance(entry, dict) else None
        if not isinstance(session_id, str) or session_id in app[SESSIONS]:
            continue
        workspace = entry.get("workspace_id")
        account = entry.get("id")
        now = time.time()
        session = Session(
            session_id=session_id,
            workspace_id=workspace if isinstance(workspace, int) else None,
            account_id=account if isinstance(account, int) else None,
            created_at=now,
            restored=True,
            last_activity=now,
        )
        app[SESSIONS][session_id] = session
        _pairing(app, session)
        restored += 1
    log.info("restored %d session(s) the backend listed as active", restored)


# --- middleware ----------------------------------------------------------------------------


def _is_public(path: str) -> bool:
    """Health and description routes answer without a key and never fail on purpose."""
    return path in ("/", "/info") or path.startswith("/health")


async def _json_body(request: web.Request) -> dict[str, Any]:
    """The body as ``express.json`` sees it: ``{}`` unless it is a JSON request."""
    if request.method == "GET" or request.content_type != "application/json":
        return {}
    try:
        raw = await request.read()
    except web.HTTPException:
        raise
    except Exception:  # a Content-Encoding the body does not match: body-parser's 400
        _fail(400, "The body cannot be decoded as its Content-Encoding says")
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        _fail(400, "Invalid JSON body")
    if not isinstance(body, dict):
        _fail(400, "JSON body must be an object")
    return body


async def _any_case(request: web.Request) -> tuple[web.Request, Handler] | None:
    """The route a path matches without regard to case, as Express's router matches it
    (``/API/Sessions/x/RESTORE`` is ``/api/sessions/x/restore``; ``x`` keeps its case)."""
    words = request.app[ROUTE_WORDS]
    path = "/".join(
        part.lower() if part.lower() in words else part for part in request.path.split("/")
    )
    if path == request.path:
        return None
    # What the router reads of a request (the request itself may have been read already).
    target = SimpleNamespace(method=request.method, rel_url=request.rel_url.with_path(path))
    match = await request.app.router.resolve(target)  # type: ignore[arg-type]
    if match.http_exception is not None:
        return None
    match.add_app(request.app)
    # As aiohttp's own handling sets it; ``match_info`` is cached on first read.
    request._match_info = match
    request._cache.pop("match_info", None)
    return request, match.handler


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Latency, unknown paths, simulated failures, body parsing and the key, in that order."""
    config = request.app[CONFIG]
    if config.latency:
        await asyncio.sleep(config.latency)
    if request.match_info.http_exception is not None:
        found = await _any_case(request)
        if found is None:
            return web.json_response(
                {"error": "Endpoint not found", "path": request.path}, status=404
            )
        request, handler = found
    try:
        if not _is_public(request.path):
            if random.random() < config.error_rate:
                _fail(500, "Simulated failure")
            request[BODY] = body = await _json_body(request)
            key = request.query.get("api_key") if request.method == "GET" else body.get("api_key")
            if config.api_key is not None and not (
                isinstance(key, str) and secrets.compare_digest(key, config.api_key)
            ):
                _fail(401, "Invalid API key")
        return await handler(request)
    except ApiError as exc:
        return web.json_response(exc.body, status=exc.status)


# --- health and description ----------------------------------------------------------------


def _health(app: web.Application) -> dict[str, Any]:
    config, sessions = app[CONFIG], app[SESSIONS]
    now = time.time()
    connected = sum(status_at(s, config.connect_delay, now) == CONNECTED for s in sessions.values())
    # No separate heap as in Node: both figures are the process's peak RSS (Linux: KiB).
    rss_mb = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    return {
        "status": "healthy",
        "uptime": round(time.monotonic() - app[STARTED], 3),
        "sessions": {
            "total": len(sessions),
            "connected": connected,
            "disconnected": len(sessions) - connected,
        },
        "memory": {"used": rss_mb, "total": rss_mb, "unit": "MB"},
        "timestamp": _iso(now),
    }


async def health(request: web.Request) -> web.Response:
    return web.json_response(_health(request.app))


async def health_detailed(request: web.Request) -> web.Response:
    config, sessions = request.app[CONFIG], request.app[SESSIONS]
    now = time.time()
    by_status = Counter(status_at(s, config.connect_delay, now) for s in sessions.values())
    return web.json_response(
        {
            **_health(request.app),
            "instance_url": config.public_url,
            "by_status": dict(by_status),
            "messages_sent": sum(s.messages_sent for s in sessions.values()),
            "config": asdict(config) | {"api_key": config.api_key is not None},
        }
    )


async def health_ready(request: web.Request) -> web.Response:
    """Always ready: a simulator has no browser pool to warm up."""
    return web.json_response({"status": "ready", "timestamp": _iso(time.time())})


async def health_live(request: web.Request) -> web.Response:
    return web.json_response({"status": "alive", "timestamp": _iso(time.time())})


async def health_metrics(request: web.Request) -> web.Response:
    sessions = request.app[SESSIONS]
    body = _health(request.app)
    body["messages_sent"] = sum(s.messages_sent for s in sessions.values())
    return web.json_response(body)


async def info(request: web.Request) -> web.Response:
    return web.json_response(
        {
            "service": "whatsapp-instance-simulator",
            "status": "running",
            "url": request.app[CONFIG].public_url,
            "uptime": round(time.monotonic() - request.app[STARTED], 3),
            "sessions": len(request.app[SESSIONS]),
        }
    )


# --- sessions ------------------------------------------------------------------------------


async def create_session(request: web.Request) -> web.Response:
    """Create a session; an existing one is answered as it is (``"existing": true``)."""
    config, body = request.app[CONFIG], request[BODY]
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        _fail(400, "session_id is required")
    now = time.time()
    session = request.app[SESSIONS].get(session_id)
    if session is not None:
        status = status_at(session, config.connect_delay, now)
        return web.json_response(
            {"success": True, "session_id": session_id, "status": status, "existing": True}
        )
    session = _new_session(request, session_id, now, restored=False)
    qr_code = _qr_code(session_id)
    _pairing(request.app, session, qr_code)
    return web.json_response(
        {
            "success": True,
            "session_id": session_id,
            "status": status_at(session, config.connect_delay, now),
            "qr_code": qr_code,
        }
    )


async def list_sessions(request: web.Request) -> web.Response:
    config, now = request.app[CONFIG], time.time()
    views = [_view(s, config, now) for s in request.app[SESSIONS].values()]
    return web.json_response({"success": True, "sessions": views, "total": len(views)})


async def session_status(request: web.Request) -> web.Response:
    session = _path_session(request)
    return web.json_response(
        {
            **_view(session, request.app[CONFIG], time.time()),
            "account_id": session.account_id,
            "last_activity": _iso(session.last_activity),
            "messages_sent": session.messages_sent,
        }
    )


async def get_metadata(request: web.Request) -> web.Response:
    session = _path_session(request)
    return web.json_response(
        {"success": True, "session_id": session.session_id, "metadata": session.metadata}
    )


async def put_metadata(request: web.Request) -> web.Response:
    """Merge the body's ``metadata`` object into the session's."""
    session = _path_session(request)
    update = request[BODY].get("metadata")
    if not isinstance(update, dict):
        _fail(400, "metadata must be an object")
    session.metadata.update(update)
    return await get_metadata(request)


async def restore_session(request: web.Request) -> web.Response:
    """Bring a persisted session back here: no QR, connected once ``connect_delay`` passed."""
    session_id, now = request.match_info["session_id"], time.time()
    session = request.app[SESSIONS].get(session_id)
    restored = session is None
    if session is None:
        session = _new_session(request, session_id, now, restored=True)
        _pairing(request.app, session)
    return web.json_response(
        {
            "success": True,
            "session_id": session_id,
            "status": status_at(session, request.app[CONFIG].connect_delay, now),
            "restored": restored,
        }
    )


async def delete_session(request: web.Request) -> web.Response:
    session_id = request.match_info["session_id"]
    session = request.app[SESSIONS].pop(session_id, None)
    if session is None:
        return web.json_response(
            {"success": True, "session_id": session_id, "alreadyDisconnected": True}
        )
    _report(request.app, "session_disconnected", session, reason="logout")
    return web.json_response(
        {"success": True, "session_id": session_id, "message": "Session disconnected"}
    )


async def reconnect_session(request: web.Request) -> web.Response:
    """Disconnect and create again here: pairing starts over, counters and metadata stay."""
    session = _path_session(request)
    session.created_at = session.last_activity = time.time()
    session.restored = False
    qr_code = _qr_code(session.session_id)
    _pairing(request.app, session, qr_code)
    return web.json_response(
        {
            "success": True,
            "session_id": session.session_id,
            "status": status_at(session, request.app[CONFIG].connect_delay, session.created_at),
            "qr_code": qr_code,
        }
    )


async def regenerate_qr(request: web.Request) -> web.Response:
    session = _path_session(request)
    if status_at(session, request.app[CONFIG].connect_delay, time.time()) == CONNECTED:
        _fail(400, "Session already connected")
    qr_code = _qr_code(session.session_id)
    _report(request.app, "qr_code_generated", session, qr_code=qr_code)
    return web.json_response(
        {"success": True, "session_id": session.session_id, "qr_code": qr_code}
    )


# --- messages ------------------------------------------------------------------------------


def _sender(request: web.Request, required: Sequence[str]) -> Session:
    """The session named in the body, checked in the instance's order: held, fields, connected."""
    body = request[BODY]
    session_id = body.get("session_id")
    if not isinstance(session_id, str) or not session_id:
        _fail(400, "session_id is required")
    session = _held(request, session_id)
    missing = [name for name in required if body.get(name) in (None, "", [])]
    if missing:
        _fail(400, f"Missing required fields: {', '.join(missing)}")
    status = status_at(session, request.app[CONFIG].connect_delay, time.time())
    if status != CONNECTED:
        _fail(400, f"Session not connected. Current status: {status}")
    return session


def _sent(app: web.Application, session: Session, recipient: Any) -> dict[str, Any]:
    """Count one message out of ``session``, report it, and describe it as the instance does."""
    now = time.time()
    session.messages_sent += 1
    session.last_activity = now
    message_id = f"sim_{uuid.uuid4().hex}"
    _report(app, "message_sent", session, message_id=message_id, recipient_phone=recipient)
    return {"success": True, "message_id": message_id, "timestamp": int(now * 1000)}


def _send_one(*required: str) -> Handler:
    """A handler for one message to ``recipient_phone`` with these other required fields."""

    async def handler(request: web.Request) -> web.Response:
        session = _sender(request, ("recipient_phone", *required))
        return web.json_response(_sent(request.app, session, request[BODY]["recipient_phone"]))

    return handler


async def bulk_send(request: web.Request) -> web.Response:
    session = _sender(request, ("recipients", "message"))
    recipients = request[BODY]["recipients"]
    if not isinstance(recipients, list):
        _fail(400, "recipients must be a list")
    results = [{"recipient": r, **_sent(request.app, session, r)} for r in recipients]
    return web.json_response(
        {"success": True, "results": results, "total": len(results), "sent": len(results)}
    )


async def message_status(request: web.Request) -> web.Response:
    """Every message the simulator accepted counts as delivered; none is remembered."""
    session = _path_session(request)
    message_id = request.query.get("message_id")
    if not message_id:
        _fail(400, "message_id is required")
    return web.json_response(
        {
            "success": True,
            "session_id": session.session_id,
            "message_id": message_id,
            "status": "delivered",
        }
    )


async def validate_session(request: web.Request) -> web.Response:
    session = _path_session(request)
    status = status_at(session, request.app[CONFIG].connect_delay, time.time())
    return web.json_response(
        {
            "success": True,
            "session_id": session.session_id,
            "status": status,
            "can_send": status == CONNECTED,
        }
    )


async def last_activity(request: web.Request) -> web.Response:
    session = _path_session(request)
    return web.json_response(
        {
            "success": True,
            "session_id": session.session_id,
            "last_activity": _iso(session.last_activity),
        }
    )


# --- application and command line ----------------------------------------------------------


def create_app(config: SimulatorConfig) -> web.Application:
    """A fresh simulated instance with no sessions."""
    app = web.Application(middlewares=[_gate], client_max_size=MAX_BODY)
    app[CONFIG] = config
    app[SESSIONS] = {}
    app[STARTED] = time.monotonic()
    app.cleanup_ctx.append(_reporting)
    app.router.add_routes(
        [
            web.get("/", info),
            web.get("/info", info),
            web.get("/health", health),
            web.get("/health/detailed", health_detailed),
            web.get("/health/ready", health_ready),
            web.get("/health/live", health_live),
            web.get("/health/metrics", health_metrics),
            web.post("/api/sessions", create_session),
            web.get("/api/sessions", list_sessions),
            web.get("/api/sessions/{session_id}/status", session_status),
            web.get("/api/sessions/{session_id}/metadata", get_metadata),
            web.put("/api/sessions/{session_id}/metadata", put_metadata),
            web.post("/api/sessions/{session_id}/restore", restore_session),
            web.delete("/api/sessions/{session_id}", delete_session),
            web.post("/api/sessions/{session_id}/reconnect", reconnect_session),
            web.post("/api/sessions/{session_id}/regenerate-qr", regenerate_qr),
            web.post("/api/messages/send", _send_one("message")),
            web.post("/api/messages/send-media", _send_one("media_url")),
            web.post("/api/messages/bulk-send", bulk_send),
            web.post("/api/messages/send-template", _send_one()),
            web.get("/api/messages/{session_id}/status", message_status),
            web.get("/api/messages/{session_id}/validate", validate_session),
            web.get("/api/internal/sessions/{session_id}/last-activity", last_activity),
        ]
    )
    app[ROUTE_WORDS] = frozenset(
        part
        for route in app.router.resources()
        for part in route.canonical.split("/")
        if part and "{" not in part
    )
    return app


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m dev.simulator", description="A simulated WhatsApp instance."
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument(
        "--api-key",
        default=os.environ.get("LARAVEL_API_TOKEN") or None,
        help="required api_key (default: $LARAVEL_API_TOKEN; none: no check)",
    )
    parser.add_argument("--connect-delay", type=float, default=SimulatorConfig.connect_delay)
    parser.add_argument("--latency", type=float, default=SimulatorConfig.latency)
    parser.add_argument("--error-rate", type=float, default=SimulatorConfig.error_rate)
    parser.add_argument(
        "--laravel-url",
        default=os.environ.get("LARAVEL_URL") or None,
        help="report events to URL/api/whatsapp/webhooks/webjs, signed with $HMAC_SECRET"
        " (default: $LARAVEL_URL; none: not reported)",
    )
    parser.add_argument(
        "--restore",
        action="store_true",
        help="at start-up, restore the sessions LARAVEL_URL/api/whatsapp/accounts/active lists",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Serve one simulated instance until SIGINT or SIGTERM."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        config = SimulatorConfig(
            api_key=args.api_key,
            connect_delay=args.connect_delay,
            latency=args.latency,
            error_rate=args.error_rate,
            public_url=f"http://{args.host}:{args.port}",
            laravel_url=args.laravel_url,
            hmac_secret=hmac_secret(),
            restore_on_start=args.restore,
        )
    except ValueError as exc:
        parser.error(str(exc))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    log.info(
        "simulated instance on %s (key %s, connect_delay=%gs, latency=%gs, error_rate=%g,"
        " events to %s)",
        config.public_url,
        "required" if config.api_key else "not checked",
        config.connect_delay,
        config.latency,
        config.error_rate,
        config.laravel_url or "nowhere",
    )
    serve(create_app(config), args.host, args.port)


if __name__ == "__main__":
    main()
