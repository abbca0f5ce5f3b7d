"""The session pin table reads like a dict whatever form it keeps an id in."""

from __future__ import annotations

import uuid

from gateway.state.table import PinTable

A, B = "http://10.0.0.1:3001", "http://10.0.0.2:3001"


def test_uuid_and_other_ids_read_back_exactly_as_given():
    lower = str(uuid.uuid4())
    upper = lower.upper()  # another session id, not the same one
    ids = [lower, upper, "session_1732900000", "s-1", "{" + lower + "}", lower.replace("-", "")]
    table = PinTable((sid, A) for sid in ids)
    table[upper] = B
    assert len(table) == len(ids)
    assert sorted(table) == sorted(ids)
    assert table[lower] == A and table.get(upper) == B and table.get("nope") is None
    assert dict(table.items()) == {**dict.fromkeys(ids, A), upper: B}
    assert lower in table and "nope" not in table and 5 not in table
    assert table == {**dict.fromkeys(ids, A), upper: B}
    del table[lower]
    table.discard(upper)
    table.discard("never pinned")
    assert lower not in table and upper not in table and len(table) == len(ids) - 2
    assert table.pop("s-1") == A and table.pop("s-1", None) is None


def test_a_canonical_uuid_takes_less_room_than_its_text():
    sid = str(uuid.uuid4())
    table = PinTable([(sid, A)])
    (key,) = table._pins
    assert key == uuid.UUID(sid).bytes
