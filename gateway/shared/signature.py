"""Webhook signatures as the instances and the Laravel backend compute them.

``X-HMAC-Signature`` is the lower-case hex HMAC-SHA256 of ``X-Timestamp + raw body`` with the
shared secret (``HMAC_SECRET``), and ``X-Timestamp`` is unix seconds no more than
:data:`MAX_SKEW` away from now, either way. The gateway checks incoming events with
:func:`verify` and the workers sign each delivery afresh with :func:`sign`; both live here so
the two can never disagree. Pure: no I/O, the clock is an argument.
"""

from __future__ import annotations

import hashlib
import hmac
from enum import StrEnum

SIGNATURE_HEADER = "X-HMAC-Signature"
TIMESTAMP_HEADER = "X-Timestamp"
# Not signed: the sender's base URL as it says it, passed along as is. A captured event can be
# sent again with any value here, so it never moves a pin on its own word.
INSTANCE_URL_HEADER = "X-Instance-Url"
MAX_SKEW = 300  # seconds, as the backend's check
# A signature is remembered this much longer than its timestamp is accepted, for processes
# whose clocks differ by up to as much.
REPLAY_MARGIN = 60
_MAX_TIMESTAMP_DIGITS = 12  # a larger "unix time" is nonsense, and int() of it is costly


class Rejection(StrEnum):
    """Why an event was refused; the values are metric labels (a fixed, small set)."""

    MISSING = "missing_headers"
    BAD_TIMESTAMP = "bad_timestamp"
    STALE = "stale_timestamp"
    BAD_SIGNATURE = "bad_signature"


MESSAGES = {
    Rejection.MISSING: f"Missing {SIGNATURE_HEADER} or {TIMESTAMP_HEADER} header",
    Rejection.BAD_TIMESTAMP: f"{TIMESTAMP_HEADER} is not unix seconds",
    Rejection.STALE: f"{TIMESTAMP_HEADER} is more than {MAX_SKEW} s away from now",
    Rejection.BAD_SIGNATURE: f"{SIGNATURE_HEADER} does not match the body",
}


def sign(secret: str, timestamp: str, body: bytes) -> str:
    """The hex signature of ``timestamp + body``."""
    return hmac.new(secret.encode(), timestamp.encode() + body, hashlib.sha256).hexdigest()


def signed_headers(secret: str, body: bytes, now: float) -> dict[str, str]:
    """``X-Timestamp`` for ``now`` and the matching ``X-HMAC-Signature``."""
    timestamp = str(int(now))
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: sign(secret, timestamp, body)}


def replay_ttl(timestamp: str, now: float) -> float:
    """How long to remember a verified signature so that every replay of it is caught.

    A signature (of ``timestamp + body``) passes :func:`verify` until ``timestamp + MAX_SKEW``;
    sent again before then, with any path or ``X-Instance-Url``, it is the same signed bytes.
    ``timestamp`` is one :func:`verify` accepted.
    """
    return max(0.0, int(timestamp) + MAX_SKEW - now) + REPLAY_MARGIN


def verify(
    secret: str, timestamp: str | None, signature: str | None, body: bytes, now: float
) -> Rejection | None:
    """``None`` when the headers prove ``body`` came from a holder of ``secret`` just now.

    The comparison takes the same time wherever the signatures differ. The timestamp is
    hashed exactly as received, as the backend does.
    """
    if not timestamp or not signature:
        return Rejection.MISSING
    if not (timestamp.isascii() and timestamp.isdigit()) or len(timestamp) > _MAX_TIMESTAMP_DIGITS:
        return Rejection.BAD_TIMESTAMP
    if abs(now - int(timestamp)) > MAX_SKEW:
        return Rejection.STALE
    expected = sign(secret, timestamp, body).encode()
    given = signature.encode("utf-8", "surrogateescape")
    if not hmac.compare_digest(expected, given):
        return Rejection.BAD_SIGNATURE
    return None
