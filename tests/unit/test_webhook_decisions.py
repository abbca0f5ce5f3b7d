"""The webhook relay's pure parts: signatures, what an event says, and delivery decisions."""

from __future__ import annotations

import hashlib
import hmac
import json

import pytest

from gateway.decisions.events import SHARED_LANE, match_instance, parse, sender
from gateway.shared.outbox import Delivery, Incoming
from gateway.shared.signature import (
    MAX_SKEW,
    REPLAY_MARGIN,
    Rejection,
    replay_ttl,
    sign,
    signed_headers,
    verify,
)
from workers.delivery import Dead, Done, RelayConfig, Retry, backoff, decide

NOW = 1_800_000_000.0
BODY = b'{"event":"session_ready","data":{"session_id":"s-1"}}'


def test_signature_is_hex_hmac_sha256_of_timestamp_then_body():
    expected = hmac.new(b"k", b"1800000000" + BODY, hashlib.sha256).hexdigest()
    assert sign("k", "1800000000", BODY) == expected
    assert signed_headers("k", BODY, NOW + 0.9) == {
        "X-Timestamp": "1800000000",
        "X-HMAC-Signature": expected,
    }


@pytest.mark.parametrize(
    ("timestamp", "signature", "body", "why"),
    [
        ("1800000000", None, BODY, Rejection.MISSING),
        (None, "x", BODY, Rejection.MISSING),
        ("", "x", BODY, Rejection.MISSING),
        ("18e8", "x", BODY, Rejection.BAD_TIMESTAMP),
        ("-1800000000", "x", BODY, Rejection.BAD_TIMESTAMP),
        ("١٨٠٠٠٠٠٠٠٠", "x", BODY, Rejection.BAD_TIMESTAMP),  # digits, but not ASCII ones
        ("9" * 400, "x", BODY, Rejection.BAD_TIMESTAMP),
        ("1799999699", "good", BODY, Rejection.STALE),
        ("1800000301", "good", BODY, Rejection.STALE),
        ("1800000000", "good", BODY + b" ", Rejection.BAD_SIGNATURE),
        ("1800000000", "é\udcff", BODY, Rejection.BAD_SIGNATURE),  # not ASCII: no TypeError
        ("1799999700", "good", BODY, None),
        ("1800000300", "good", BODY, None),
    ],
)
def test_verify(timestamp, signature, body, why):
    if signature == "good":
        signature = sign("k", timestamp, BODY)
    assert verify("k", timestamp, signature, body, NOW) == why


@pytest.mark.parametrize(
    ("body", "name", "lane", "pins"),
    [
        (BODY, "session_ready", "s-1", True),
        (
            b'{"event":"session_disconnected","data":{"session_id":"s-1"}}',
            "session_disconnected",
            "s-1",
            False,
        ),
        (b'{"event":"message_read","data":{"session_id":"s-1"}}', "message_read", "s-1", True),
        (b'{"event":"session_ready","data":{}}', "session_ready", SHARED_LANE, False),
        (
            b'{"event":"session_ready","data":{"session_id":"a/b"}}',
            "session_ready",
            SHARED_LANE,
            False,
        ),
        (
            b'{"event":"session_ready","data":{"session_id":12}}',
            "session_ready",
            SHARED_LANE,
            False,
        ),
        (
            b'{"event":"session_ready","data":{"session_id":"' + b"x" * 129 + b'"}}',
            "session_ready",
            SHARED_LANE,
            False,
        ),
        (b'{"event":7,"data":[]}', None, SHARED_LANE, False),
        (b"[1, 2]", None, SHARED_LANE, False),
        (b"not json", None, SHARED_LANE, False),
        (b"\xff\xfe", None, SHARED_LANE, False),
        (b"[" * 100_000 + b"]" * 100_000, None, SHARED_LANE, False),
    ],
)
def test_parse(body, name, lane, pins):
    event = parse(body)
    assert (event.name, event.lane, event.pins) == (name, lane, pins)


def test_event_label_is_bounded():
    assert parse(BODY).label == "session_ready"
    assert parse(json.dumps({"event": "x" * 50}).encode()).label == "other"


INSTANCES = ("http://localhost:3001", "http://127.0.0.1:3002", "https://wa.example.com/node")


@pytest.mark.parametrize(
    ("header", "url"),
    [
        ("http://localhost:3001", "http://localhost:3001"),
        ("http://127.0.0.1:3001/", "http://localhost:3001"),
        ("HTTP://LocalHost:3001", "http://localhost:3001"),
        ("http://localhost:3002", "http://127.0.0.1:3002"),
        ("https://WA.example.com/node/", "https://wa.example.com/node"),
        ("http://localhost:3003", None),
        ("https://localhost:3001", None),
        ("http://10.0.0.1:3001", None),
        ("http://localhost:99999", None),
        ("3001", None),
        ("", None),
        (None, None),
    ],
)
def test_match_instance(header, url):
    assert match_instance(header, INSTANCES) == url


@pytest.mark.parametrize(
    ("timestamp", "ttl"),
    [
        ("1800000000", MAX_SKEW + REPLAY_MARGIN),  # signed just now
        ("1799999700", REPLAY_MARGIN),  # the oldest still accepted
        ("1800000300", 2 * MAX_SKEW + REPLAY_MARGIN),  # the newest still accepted
    ],
)
def test_a_signature_is_remembered_while_its_timestamp_is_accepted(timestamp, ttl):
    assert verify("k", timestamp, sign("k", timestamp, BODY), BODY, NOW) is None
    assert replay_ttl(timestamp, NOW) == ttl
    # Still accepted at the last moment the signature is remembered for, with no margin.
    assert (
        verify("k", timestamp, sign("k", timestamp, BODY), BODY, NOW + ttl - REPLAY_MARGIN) is None
    )


@pytest.mark.parametrize(
    ("header", "who"),
    [
        ("http://localhost:3001", "http://localhost:3001"),
        ("HTTP://127.0.0.1:3001/", "http://localhost:3001"),  # a configured one, as configured
        ("http://127.0.0.1:3002", "http://127.0.0.1:3002"),
        ("HTTP://LOCALHOST:3009/", "http://127.0.0.1:3009"),  # not configured: normalised
        ("http://Example.com", "http://example.com"),
        ("Not A URL", "not a url"),
        ("", ""),
        (None, ""),
    ],
)
def test_sender_is_one_spelling_of_x_instance_url(header, who):
    assert sender(header, INSTANCES) == who


def incoming(body: bytes, who: str, path: str = "/p", instance: str = "") -> Incoming:
    return Incoming(path, body, instance, "application/json", "", "s-1", "sig", who)


def test_the_identity_of_an_event_is_its_sender_and_signed_bytes():
    first = incoming(BODY, "http://localhost:3001").identity
    # Neither the path (query included) nor the header as spelled is signed: no difference.
    assert incoming(BODY, "http://localhost:3001", "/p?x=1", "HTTP://X").identity == first
    assert incoming(BODY, "http://127.0.0.1:3002").identity != first
    assert incoming(BODY + b" ", "http://localhost:3001").identity != first
    # The two parts cannot run into each other.
    assert incoming(b"1" + BODY, "a").identity != incoming(BODY, "a1").identity


def test_backoff_doubles_from_the_base_to_the_cap():
    assert [backoff(n, 1, 300) for n in range(1, 12)] == [
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        300,
        300,
    ]
    assert backoff(10_000, 1, 300) == 300


CONFIG = RelayConfig("http://backend", "k", "p:", max_age=3600, backoff_base=1, backoff_cap=300)


def delivery(attempts: int, since: float = NOW - 10) -> Delivery:
    return Delivery("id", "s-1", "t", attempts, "/p", b"{}", "", "", since, since)


@pytest.mark.parametrize("status", [200, 201, 204])
def test_2xx_is_done(status):
    assert decide(status, None, delivery(1), CONFIG, NOW) == Done()


@pytest.mark.parametrize("status", [301, 400, 401, 403, 404, 413, 422])
def test_other_answers_are_dead_at_once(status):
    assert isinstance(decide(status, None, delivery(1), CONFIG, NOW), Dead)


@pytest.mark.parametrize("status", [None, 408, 429, 500, 502, 503])
def test_retryable_outcomes_back_off(status):
    assert decide(status, None, delivery(1), CONFIG, NOW) == Retry(NOW + 1)
    assert decide(status, None, delivery(4), CONFIG, NOW) == Retry(NOW + 8)


def test_retry_after_wins_but_not_past_the_max_age():
    assert decide(429, 42, delivery(1), CONFIG, NOW) == Retry(NOW + 42)
    late = delivery(30, since=NOW - 3590)
    assert decide(503, None, late, CONFIG, NOW) == Retry(NOW + 10)  # one last try at 1 h


def test_still_failing_at_the_max_age_is_dead():
    assert isinstance(decide(500, None, delivery(30, since=NOW - 3600), CONFIG, NOW), Dead)
