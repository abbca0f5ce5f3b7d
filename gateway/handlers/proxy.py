"""The service: forward a call to the instance the router chose, and keep sessions reachable.

A session that is not where its pin says (the instance refused the connection, is down, or
answered ``Session not found``) is searched for on the live instances, re-pinned and the
request replayed there once, but only when nothing can have been done by the first
instance. After a timeout or a cut answer the request is not sent again: a message might
have gone out.

The gateway never says more than the instances do: ``Session not found`` comes from an
instance, and only once every instance that may hold the session has said it does not;
when one of them could not be asked, the answer is ``503`` naming it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from gateway.decisions.route_table import REVIVING_ACTIONS
from gateway.health.checks import HealthChecker
from gateway.http.answers import Answer, Relayed
from gateway.http.errors import Outcome, json_error, unanswered
from gateway.http.requests import Call
from gateway.locate.rediscovery import Rediscovery, Search
from gateway.metrics import GatewayMetrics
from gateway.routing.router import Router
from gateway.state.counts import Placement
from gateway.state.flights import Busy
from gateway.state.store import PinStore
from gateway.upstream.client import Reply, UpstreamError, Upstreams

log = logging.getLogger("gateway.proxy")

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def respond(reply: Reply, url: str) -> Relayed:
    """The instance's answer, unchanged but for hop-by-hop headers, naming the instance."""
    return Relayed(reply.status, reply.raw_headers, reply.body, url)


def outcome(sent: bool) -> Outcome:
    return "unknown" if sent else "not-sent"


def failure(error: UpstreamError) -> web.Response:
    """Our answer when an instance gave none: 504 after a timeout, else 502."""
    status = 504 if error.kind in ("timeout", "connect_timeout") else 502
    return unanswered(
        status,
        f"Instance {error.url} did not answer ({error.kind})",
        outcome(error.sent),
        instance=error.url,
        kind=error.kind,
    )


def replayable(call: Call, error: UpstreamError) -> bool:
    """Whether a failed call may go to another instance without risk of doing it twice.

    Only when it never reached the instance, or when it is a read cut off mid-way; never
    after a timeout, when the instance may still be acting on it.
    """
    return not error.sent or (error.kind == "reset" and call.method in SAFE_METHODS)


def _already_gone(call: Call, reply: Reply) -> bool:
    """A DELETE the instance did nothing for: the session may live elsewhere."""
    if call.method != "DELETE":
        return False
    body = reply.json()
    return isinstance(body, dict) and bool(body.get("alreadyDisconnected"))


def _is_delete(call: Call) -> bool:
    return call.method == "DELETE" and call.route.template == "/api/sessions/{id}"


NO_INSTANCE = "No instance is up"


class Proxy:
    def __init__(
        self,
        router: Router,
        pins: PinStore,
        upstreams: Upstreams,
        health: HealthChecker,
        rediscovery: Rediscovery,
        metrics: GatewayMetrics,
        limit: int,
    ) -> None:
        self.router, self.pins, self.upstreams = router, pins, upstreams
        self.health, self.rediscovery, self.metrics, self.limit = (
            health,
            rediscovery,
            metrics,
            limit,
        )
        self._changed: list[Callable[[], None]] = []

    def on_sessions_changed(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` when an instance answered 2xx to a create or a delete through
        this process, before the answer goes back (e.g. so ``/health`` is asked again)."""
        self._changed.append(listener)

    def _sessions_changed(self) -> None:
        for listener in self._changed:
            listener()

    def handle(self, call: Call) -> Awaitable[Answer]:
        """The coroutine that answers ``call`` (not one wrapped around it: one frame fewer
        to resume on every answer)."""
        if call.session_id is not None:
            if call.route.template == "/api/sessions" and call.method == "POST":
                return self.create(call, call.session_id)
            return self.session_call(call, call.session_id)
        if call.workspace_id is not None:
            return self._for_workspace(call, call.workspace_id)
        return self.forward(call, self.router.any_up())

    async def _for_workspace(self, call: Call, workspace_id: str) -> Answer:
        return await self.forward(call, await self.router.for_workspace(workspace_id))

    async def forward(self, call: Call, first: str | None) -> Answer:
        """Send to ``first``; while the call reaches no instance, to the next live one."""
        error: UpstreamError | None = None
        for url in self.router.fallbacks(first) if first else []:
            try:
                return respond(await self._send(call, url), url)
            except UpstreamError as exc:
                error = exc
                if exc.sent:
                    break
        return failure(error) if error else unanswered(503, NO_INSTANCE, "not-sent")

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

    async def session_call(self, call: Call, session_id: str) -> Answer:
        pinned = self.pins.remembered(session_id) or await self.pins.session(session_id)
        said_not_found: Reply | None = None
        sent = False  # the call reached an instance that gave no answer
        if pinned is not None and self.router.is_up(pinned):
            try:
                reply = await self._send(call, pinned)
            except UpstreamError as exc:
                if not replayable(call, exc):
                    return failure(exc)
                sent = exc.sent
            else:
                if not (reply.session_not_found or _already_gone(call, reply)):
                    await self._after(call, session_id, pinned, reply)
                    return respond(reply, pinned)
                said_not_found = reply
        return await self._relocate(call, session_id, pinned, said_not_found, sent)

    async def _relocate(
        self,
        call: Call,
        session_id: str,
        pinned: str | None,
        said_not_found: Reply | None,
        sent: bool,
    ) -> Answer:
        """The session is not where its pin says: find it, re-pin it, replay once."""
        asked = {pinned} if said_not_found is not None else set()
        moved = self.pins.sessions.get(session_id)
        if moved not in (None, pinned) and self.router.is_up(moved):
            search = Search(holder=moved)  # another request found it meanwhile
        elif self.rediscovery.known_absent(session_id):
            search = Search()
        elif call.api_key is None and self.rediscovery.api_token:
            # The instances would refuse it: no search on its behalf, nothing learned.
            return json_error(401, "Invalid API key: api_key is required")
        else:
            candidates = [u for u in self.router.live() if u not in asked]
            complete = not self.router.down()
            search = await self.rediscovery.find(session_id, candidates, call.api_key, complete)
        if search.holder is not None:
            if pinned is not None:
                self.metrics.replays.labels(search.holder).inc()
            try:
                reply = await self._send(call, search.holder)
            except UpstreamError as exc:
                return failure(exc)
            await self._after(call, session_id, search.holder, reply)
            return respond(reply, search.holder)
        unsure = [*self.router.down(), *search.unsure]
        if unsure:  # never placed again while it may live there: one session, one instance
            return unanswered(
                503,
                "Session unavailable: it may be on an instance that cannot be asked now",
                outcome(sent),
                instances=unsure,
                instance=unsure[0],
            )
        if call.route.action in REVIVING_ACTIONS and not search.denied:
            return await self.create(call, session_id)
        if said_not_found is not None and pinned is not None and not search.denied:
            await self._after(call, session_id, pinned, said_not_found)
            return respond(said_not_found, pinned)
        # On no instance: let one answer for itself (its 404, or its 401 for a wrong key).
        return await self._answer_anywhere(call, session_id)

    async def _answer_anywhere(self, call: Call, session_id: str) -> Answer:
        for url in self.router.live():
            try:
                reply = await self._send(call, url)
            except UpstreamError as exc:
                if exc.sent:
                    return failure(exc)
                continue
            await self._after(call, session_id, url, reply)
            return respond(reply, url)
        return unanswered(503, NO_INSTANCE, "not-sent")

    async def _after(self, call: Call, session_id: str, url: str, reply: Reply) -> None:
        """Book-keeping once an instance answered for a session."""
        if _is_delete(call) and 200 <= reply.status < 300:
            self._sessions_changed()
            if await self.pins.session(session_id) is not None:
                await self.pins.unpin_session(session_id, source="delete")
            if not _already_gone(call, reply):
                await self.pins.session_ended(url)

    # --- new sessions ---------------------------------------------------------------------

    async def create(self, call: Call, session_id: str) -> Answer:
        """Place a new session; one create of a session at a time across all processes."""
        try:
            async with self.pins.creating(session_id):
                answer = await self._create(call, session_id)
        except Busy:
            return unanswered(
                503, "A create of this session is still in flight elsewhere", "not-sent"
            )
        if 200 <= answer.status < 300:  # made, or made again where its pin said
            self._sessions_changed()
        return answer

    async def _create(self, call: Call, session_id: str) -> Answer:
        pinned = await self.pins.session(session_id, fresh=True)
        if pinned is None:
            pinned = await self._unpinned_holder(call, session_id)
        if pinned is not None and self.router.is_up(pinned):
            try:  # the instance answers with (or restores) its session
                return respond(await self._send(call, pinned), pinned)
            except UpstreamError as exc:
                if exc.sent:
                    return failure(exc)
        return await self._place(call, session_id)

    async def _unpinned_holder(self, call: Call, session_id: str) -> str | None:
        """A live instance that holds the session without a pin (made outside the gateway,
        or a pin lost while its instance restarted): a create goes there, not to a second
        instance. Asked with the caller's key only; a search any instance could not answer
        places it all the same (a create must not wait for an instance that is down)."""
        if call.api_key is None or self.rediscovery.known_absent(session_id):
            return None
        complete = not self.router.down()
        search = await self.rediscovery.find(session_id, self.router.live(), call.api_key, complete)
        return search.holder

    async def _place(self, call: Call, session_id: str) -> Answer:
        refused: set[str] = set()  # reached nothing: suspect, and not placed on again
        while True:
            placement = await self.router.place(call.workspace_id, refused)
            if placement is None:
                if not self.router.eligible(refused):
                    return unanswered(503, "No instance is up to take a new session", "not-sent")
                return unanswered(
                    503,
                    f"Every instance holds its limit of {self.limit} active sessions",
                    "not-sent",
                    max_sessions_per_instance=self.limit,
                )
            try:
                reply = await self._send(call, placement.url)
            except UpstreamError as exc:
                if exc.sent:  # it may exist there now: a retry must go there, not elsewhere
                    await self._placed(call, session_id, placement, source="create-unknown")
                    return failure(exc)
                await self.pins.abandon(placement)
                refused.add(placement.url)  # nothing reached it: place elsewhere
                continue
            if not 200 <= reply.status < 300:
                await self.pins.abandon(placement)
                return respond(reply, placement.url)
            await self._placed(call, session_id, placement, source="create")
            self.metrics.placements.labels(placement.url).inc()
            return respond(reply, placement.url)

    async def _placed(self, call: Call, session_id: str, placement: Placement, source: str) -> None:
        await self.pins.confirm(placement)
        await self.pins.pin_session(session_id, placement.url, call.workspace_id, source=source)
