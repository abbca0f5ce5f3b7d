"""Payload decoding and Laravel-style encoding."""

from __future__ import annotations

import json

import pytest

from gateway.shared.laravel.jobs import (
    Job,
    PayloadError,
    decode,
    encode,
    new_payload,
    pushed_at,
    with_attempts,
)


def test_encode_is_compact_escapes_slashes_and_keeps_unicode_and_key_order() -> None:
    payload = {"z": 1, "url": "http://x/y", "text": "olá ✓", "a": {}, "b": []}
    assert (
        encode(payload) == '{"z":1,"url":"http:\\/\\/x\\/y","text":"olá ✓","a":{},"b":[]}'.encode()
    )
    assert json.loads(encode(payload)) == payload


def test_with_attempts_changes_only_attempts() -> None:
    raw = b'{"uuid":"u","custom":{"k":[1,2]},"attempts":3,"data":{"url":"a\\/b"}}'
    assert (
        with_attempts(raw, 2)
        == b'{"uuid":"u","custom":{"k":[1,2]},"attempts":2,"data":{"url":"a\\/b"}}'
    )


@pytest.mark.parametrize("raw", [b"{not json", b"[1,2]", b'"text"', b"\xff\xfe"])
def test_decode_rejects_anything_but_an_object(raw: bytes) -> None:
    with pytest.raises(PayloadError):
        decode(raw)


def test_reserved_job_views() -> None:
    raw = encode(new_payload("send", {"session_id": "s1"}, maxTries=5))
    job = Job.reserved("q", with_attempts(raw, 1), counted=True)
    assert (job.name, job.attempts, job.data, job.queue) == ("send", 1, {"session_id": "s1"}, "q")
    assert job.uuid == job.payload["uuid"]
    assert job.payload["maxTries"] == 5
    bad = Job.reserved("q", b"nope", counted=False)
    assert bad.payload is None and "not valid JSON" in bad.error
    uncounted = Job.reserved("q", b'{"job":"x"}', counted=False)
    assert uncounted.payload is None and "cjson" in uncounted.error


def test_pushed_at_prefers_ours_then_laravels_created_at() -> None:
    assert pushed_at({"pushedAt": 10.5, "createdAt": 3}) == 10.5
    assert pushed_at({"createdAt": 3}) == 3.0
    assert pushed_at({"pushedAt": None}) is None
    assert pushed_at(new_payload("x", {})) is not None
