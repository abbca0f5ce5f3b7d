"""At most once per key: a request with an ``Idempotency-Key`` reaches an instance once.

The first request with a key is held in Redis *before* it is forwarded; its answer is kept
and given again (``Idempotent-Replayed: true``) to every repeat, which never reaches an
instance. A repeat while the first is in flight, or after a first whose outcome is unknown,
is refused ``409`` with ``X-Gateway-Outcome: unknown``; one with another body ``422``. What the
gateway proved was not sent frees the key. Without Redis a keyed request is refused (``503
not-sent``): a second send must stay impossible.

The first request is answered and settled even if its caller goes away meanwhile (a worker
killed mid-send): its repeat then finds the kept answer, not a key in flight forever.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

from gateway.decisions.idempotency import (
    KEY_RULE,
    Repeat,
    Settle,
    fingerprint,
    parse_key,
    repeat,
    scope,
    settle,
)
from gateway.http.answers import Answer, Relayed
from gateway.http.errors import OUTCOME_HEADER, json_error, unanswered
from gateway.http.headers import INSTANCE_HEADER, REPLAYED_HEADER
from gateway.http.requests import Call
from gateway.metrics import GatewayMetrics
from gateway.shared.redis_url import NotReplicated
from gateway.state.idempotency import Begun, IdempotencyStore, Kept
from gateway.state.link import Unavailable

log = logging.getLogger("gateway.idempotency")

Forward = Callable[[Call], Awaitable[Answer]]

REFUSALS = {
    Repeat.IN_FLIGHT: "A request with this Idempotency-Key is in flight, or its gateway stopped"
    " before it was answered; it may have been acted on",
    Repeat.UNKNOWN: "A request with this Idempotency-Key reached an instance that gave no"
    " answer; it may have been acted on",
}


class Idempotency:
    def __init__(self, store: IdempotencyStore, metrics: GatewayMetrics) -> None:
        self.store, self.metrics = store, metrics
        self._settling: set[asyncio.Task[Answer]] = set()

    async def handle(self, call: Call, header: str, forward: Forward) -> Answer:
        key = parse_key(header)
        if key is None:
            return json_error(400, KEY_RULE)
        path = call.path_qs.partition("?")[0]
        name = scope(path, call.session_id, key)
        fp = fingerprint(call.method, path, call.session_id, _without_key(call.payload), call.body)
        try:
            begun = await self.store.begin(name, fp)
        except Unavailable:
            self._count("unavailable")
            return unanswered(
                503, "Idempotency-Key cannot be held now (Redis is unreachable)", "not-sent"
            )
        except NotReplicated:
            self._count("unavailable")
            return unanswered(
                503, "Idempotency-Key cannot be held now (not on enough Redis replicas)", "not-sent"
            )
        if begun.token is None:
            return self._repeat(begun, fp)
        self._count("forwarded")
        # Shielded: a caller that leaves does not leave the key in flight for good.
        task = asyncio.ensure_future(self._first(call, name, begun.token, forward))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)
        return await asyncio.shield(task)

    async def _first(self, call: Call, name: str, token: str, forward: Forward) -> Answer:
        answer = await forward(call)
        relayed = isinstance(answer, Relayed)
        verdict = settle(answer.status, relayed, answer.headers.get(OUTCOME_HEADER))
        try:
            if verdict is Settle.KEEP and isinstance(answer, Relayed):
                await self.store.keep(name, token, answer)
            elif verdict is Settle.UNKNOWN:
                await self.store.unknown(name, token)
            else:
                await self.store.free(name, token)
        except Unavailable:  # held in flight: repeats are refused, never sent again
            log.warning("an idempotency key could not be settled (Redis unreachable)")
        return answer

    def _repeat(self, begun: Begun, fp: str) -> Answer:
        assert begun.held is not None
        what = repeat(begun.held, fp)
        self._count(what.value)
        if what is Repeat.MISMATCH:
            return json_error(422, "This Idempotency-Key was used for a different request")
        if what is Repeat.REPLAY and begun.kept is not None:
            return replayed(begun.kept)
        return unanswered(409, REFUSALS.get(what, REFUSALS[Repeat.UNKNOWN]), "unknown")

    def _count(self, result: str) -> None:
        self.metrics.count(self.metrics.idempotency, result)

    async def close(self) -> None:
        """Let first requests still being answered settle their keys."""
        if self._settling:
            await asyncio.wait(set(self._settling))


def replayed(kept: Kept) -> Answer:
    """The kept answer again, marked as such."""
    if kept.body is None:  # too large to keep: the status, and a body that says so
        answer: Answer = web.Response(
            status=kept.status,
            body=orjson.dumps(
                {
                    "success": 200 <= kept.status < 300,
                    "idempotent_replayed": True,
                    "note": f"the first answer's body ({kept.size} bytes) was too large to keep",
                }
            ),
            content_type="application/json",
        )
        answer.headers[INSTANCE_HEADER] = kept.instance
    else:
        answer = Relayed(kept.status, kept.headers, kept.body, kept.instance)
    answer.headers[REPLAYED_HEADER] = "true"
    return answer


def _without_key(payload: object) -> object:
    """The body as it counts for a repeat: the caller's credentials are not the request."""
    if isinstance(payload, dict) and "api_key" in payload:
        return {k: v for k, v in payload.items() if k != "api_key"}
    return payload
