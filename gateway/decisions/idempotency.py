"""Idempotency keys: which requests take one, what a key may be, what a repeat is answered.

The IETF httpapi draft's ``Idempotency-Key`` header with Stripe's semantics: the first
request with a key is forwarded, its answer kept; a repeat is answered from what was kept and
never reaches an instance. A message sent twice is a user-visible bug and a ban risk, and only
the gateway sees both attempts of a caller that retried (a worker killed mid-send, a read
timeout), so this is where a second send is stopped.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

# The routes whose POST acts: a message goes out, or a session is made.
KEYED_ROUTES = frozenset({"/api/messages/{action}", "/api/sessions"})
KEY = re.compile(r"[\x21-\x7e]{1,255}")
KEY_RULE = "Idempotency-Key must be 1-255 visible ASCII characters"
# An instance's statuses that say it did nothing: the key is freed for a later attempt.
NOT_ACTED = frozenset({408, 429, 503})


def keyed(method: str, template: str) -> bool:
    """Whether a request of this method and route template is held to its key."""
    return method == "POST" and template in KEYED_ROUTES


def parse_key(value: str) -> str | None:
    """The key of a header value, None when it is not a valid key.

    The draft sends it as a structured-field string (``"..."``); a bare token is taken too.
    """
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = value[1:-1]
        if '"' in value or "\\" in value:
            return None
    return value if KEY.fullmatch(value) else None


def scope(path: str, session_id: str | None, key: str) -> str:
    """One key's name in storage: scoped by the route and the session, of a fixed length
    (a caller's key is never a Redis key name of its own)."""
    text = f"{path.rstrip('/')}\0{session_id or ''}\0{key}"
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def fingerprint(method: str, path: str, session_id: str | None, payload: Any, body: bytes) -> str:
    """What a repeat must match: method, route, session and the body's content.

    A JSON body counts by its content, not its spelling (key order, spacing): the workers
    re-encode a job whose reservation expired, and a repeat must still be one.
    """
    if payload is not None:
        content = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        digest = hashlib.sha256(content.encode("utf-8", "surrogatepass")).hexdigest()
    else:
        digest = hashlib.sha256(body).hexdigest()
    head = f"{method} {path.rstrip('/')} {session_id or ''} "
    return hashlib.sha256((head + digest).encode("utf-8", "surrogateescape")).hexdigest()[:32]


class State(StrEnum):
    """Where a key stands in storage."""

    FLIGHT = "flight"  # forwarded, no answer yet (or the gateway died waiting for it)
    DONE = "done"  # answered; the answer is kept
    UNKNOWN = "unknown"  # it reached an instance that gave no answer: it may have acted


class Repeat(Enum):
    """What a request whose key is already held gets."""

    REPLAY = "replayed"  # the kept answer, marked Idempotent-Replayed
    IN_FLIGHT = "in_flight"  # 409: the first is still being answered
    UNKNOWN = "unknown"  # 409: the first may have acted, nobody knows
    MISMATCH = "mismatch"  # 422: the key was used for another request


@dataclass(frozen=True, slots=True)
class Held:
    """A key as storage holds it."""

    state: str
    fingerprint: str


def repeat(held: Held, fingerprint: str) -> Repeat:
    if held.fingerprint != fingerprint:
        return Repeat.MISMATCH
    if held.state == State.DONE:
        return Repeat.REPLAY
    if held.state == State.UNKNOWN:
        return Repeat.UNKNOWN
    return Repeat.IN_FLIGHT


class Settle(Enum):
    """What becomes of a key once its first request is answered."""

    KEEP = "keep"  # the instance answered and may have acted: replay it to every repeat
    UNKNOWN = "unknown"  # no answer after the call reached an instance: refuse repeats
    FREE = "free"  # provably nothing was done: a later attempt may go


def settle(status: int, relayed: bool, outcome: str | None) -> Settle:
    """How an answer settles its key.

    An instance's answer is kept, but for those that say it did nothing (a 4xx refusal, 408,
    429, 503): a corrected or later attempt may go. The gateway's own answers say it
    themselves: ``unknown`` holds the key, ``not-sent`` (or any other refusal of its own)
    frees it.
    """
    if relayed:
        if 200 <= status < 300 or (status >= 500 and status not in NOT_ACTED):
            return Settle.KEEP
        return Settle.FREE
    return Settle.UNKNOWN if outcome == "unknown" else Settle.FREE
