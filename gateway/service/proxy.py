"""The service: forward a call to the instance the router chose, and keep sessions reachable.

A session that is not where its pin says (the instance refused the connection, is down, or
answered ``Session not found``) is searched for on the other instances, re-pinned and the
request replayed there once, but only when nothing can have been done by the first
instance. After a timeout or a cut answer the request is not sent again: a message might
have gone out.
"""

from __future__ import annotations

import logging

from aiohttp import web

from gateway.decisions.routes import REVIVING_ACTIONS
from gateway.errors import json_error
from gateway.headers import INSTANCE_HEADER, end_to_end
from gateway.health.checks import HealthChecker
from gateway.locate.rediscovery import Rediscovery
from gateway.metrics import Metrics
from gateway.requests import Call
from gateway.router import Router
from gateway.state.store import PinStore
from gateway.upstream.client import Reply, UpstreamError, Upstreams

log = logging.getLogger("gateway.proxy")

IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})


def respond(reply: Reply, url: str) -> web.Response:
    """The instance's answer, unchanged but for hop-by-hop headers, naming the instance."""
    headers = end_to_end(reply.headers)
    headers[INSTANCE_HEADER] = url
    return web.Response(status=reply.status, headers=headers, body=reply.body)


def failure(error: UpstreamError) -> web.Response:
    """Our answer when an instance gave none: 504 after a timeout, else 502."""
    status = 504 if error.kind == "timeout" else 502
    return json_error(
        status,
        f"Instance {error.url} did not answer ({error.kind})",
        instance=error.url,
        kind=error.kind,
    )


def replayable(call: Call, error: UpstreamError) -> bool:
    """Whether a failed call may go to another instance without risk of doing it twice.

    Only when it never reached the instance, or when it is a read cut off mid-way; never
    after a timeout, when the instance may still be acting on it.
    """
    return not error.sent or (error.kind == "reset" and call.method in IDEMPOTENT)


def _already_gone(call: Call, reply: Reply) -> bool:
    """A DELETE the instance did nothing for: the session may live elsewhere."""
    body = reply.json()
    return (
        call.method == "DELETE" and isinstance(body, dict) and bool(body.get("alreadyDisconnected"))
    )


class Proxy:
    def __init__(
        self,
        router: Router,
        pins: PinStore,
        upstreams: Upstreams,
        health: HealthChecker,
        rediscovery: Rediscovery,
        metrics: Metrics,
        limit: int,
    ) -> None:
        self.router, self.pins, self.upstreams = router, pins, upstreams
        self.health, self.rediscovery, self.metrics, self.limit = (
            health,
            rediscovery,
            metrics,
            limit,
        )

    async def handle(self, call: Call) -> web.StreamResponse:
        if call.session_id is not None:
            if call.route.template == "/api/sessions" and call.method == "POST":
                return await self.create(call, call.session_id)
            return await self.session_call(call, call.session_id)
        if call.workspace_id is not None:
            return await self.forward(call, await self.router.for_workspace(call.workspace_id))
        url = self.router.any_up()
        if url is None:
            return json_error(503, "No instance is up")
        return await self.forward(call, url)

    async def forward(self, call: Call, url: str) -> web.StreamResponse:
        try:
            return respond(await self._send(call, url), url)
        except UpstreamError as exc:
            return failure(exc)

    async def _send(self, call: Call, url: str) -> Reply:
        try:
            return await self.upstreams.send(
                url, call.method, call.path_qs, call.headers, call.body
            )
        except UpstreamError as exc:
            if not exc.sent:
                self.health.suspect(url)
            raise

    # --- sessions that exist --------------------------------------------------------------

    async def session_call(self, call: Call, session_id: str) -> web.StreamResponse:
        pinned = await self.pins.session(session_id)
        tried: set[str] = set()
        pinned_down = pinned is not None and not self.router.is_up(pinned)
        if pinned is not None and not pinned_down:
            try:
                reply = await self._send(call, pinned)
            except UpstreamError as exc:
                if not replayable(call, exc):
                    return failure(exc)
                pinned_down = not exc.sent
            else:
                if not (reply.session_not_found or _already_gone(call, reply)):
                    await self._after(call, session_id, pinned, reply)
                    return respond(reply, pinned)
            tried.add(pinned)
        return await self._relocate(call, session_id, pinned, tried, pinned_down)

    async def _relocate(
        self, call: Call, session_id: str, pinned: str | None, tried: set[str], pinned_down: bool
    ) -> web.StreamResponse:
        """The session is not on its pinned instance: find it, re-pin it, replay once."""
        moved = self.pins.sessions.get(session_id)
        if moved is not None and moved not in tried and self.router.is_up(moved):
            url: str | None = moved  # another request found it meanwhile
        else:
            candidates = [u for u in self.router.live() if u not in tried]
            url = await self.rediscovery.find(session_id, candidates)
        if url is not None:
            if pinned is not None:
                self.metrics.replays.labels(url).inc()
            try:
                reply = await self._send(call, url)
            except UpstreamError as exc:
                return failure(exc)
            await self._after(call, session_id, url, reply)
            return respond(reply, url)
        return await self._on_no_instance(call, session_id, pinned, pinned_down)

    async def _on_no_instance(
        self, call: Call, session_id: str, pinned: str | None, pinned_down: bool
    ) -> web.StreamResponse:
        if call.route.action in REVIVING_ACTIONS:
            return await self.create(call, session_id)
        if call.method == "DELETE" and call.route.template == "/api/sessions/{id}":
            if pinned is not None:
                await self.pins.unpin_session(session_id, source="delete")
            url = self.router.any_up()
            return await self.forward(call, url) if url else json_error(503, "No instance is up")
        if pinned_down:
            return json_error(
                503,
                "Session unavailable: its instance is down and no other instance holds it",
                instance=pinned,
            )
        return json_error(404, "Session not found", detail="the session is on no instance")

    async def _after(self, call: Call, session_id: str, url: str, reply: Reply) -> None:
        """Book-keeping once an instance acted on a session."""
        deleted = call.method == "DELETE" and call.route.template == "/api/sessions/{id}"
        if deleted and 200 <= reply.status < 300:
            await self.pins.unpin_session(session_id, source="delete")
            if not _already_gone(call, reply):
                await self.pins.session_ended(url)

    # --- new sessions ---------------------------------------------------------------------

    async def create(self, call: Call, session_id: str) -> web.StreamResponse:
        pinned = await self.pins.session(session_id)
        if pinned is not None and self.router.is_up(pinned) and call.route.action is None:
            return await self.forward(call, pinned)  # the instance answers with its session
        refused: set[str] = set()
        while True:
            placement = await self.router.place(call.workspace_id, refused)
            if placement is None:
                if not self.router.eligible(refused):
                    return json_error(503, "No instance is up to take a new session")
                return json_error(
                    503,
                    f"Every instance holds its limit of {self.limit} active sessions",
                    max_sessions_per_instance=self.limit,
                )
            try:
                reply = await self._send(call, placement.url)
            except UpstreamError as exc:
                await self.pins.abandon(placement)
                if exc.sent:
                    return failure(exc)
                refused.add(placement.url)  # nothing reached it: place elsewhere
                continue
            if not 200 <= reply.status < 300:
                await self.pins.abandon(placement)
                return respond(reply, placement.url)
            await self.pins.confirm(placement)
            await self.pins.pin_session(
                session_id, placement.url, call.workspace_id, source="create"
            )
            self.metrics.placements.labels(placement.url).inc()
            return respond(reply, placement.url)
