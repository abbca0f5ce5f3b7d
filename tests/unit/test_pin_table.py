"""The session pin table reads like a dict whatever form it keeps an id in."""

from __future__ import annotations

import uuid

from gateway.state.pin_table import PinTable

A, B = "http://10.0.0.1:3001", "http://10.0.0.2:3001"


def test_uuid_and_other_ids_read_back_exactly_as_given():
    lower = str(uuid.uuid4())
    upper = lower.upper()  # another session id, not the same one
    ids = [
        lower,
        upper,
        "session_1732900000",
        "session_01732900000",  # another id: a leading zero
        "session_0",
        "session_" + "9" * 30,
        "s-1",
        "{" + lower + "}",
        lower.replace("-", ""),
    ]
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


def test_the_backends_kinds_of_id_are_kept_as_numbers_however_they_arrive():
    sid = str(uuid.uuid4())
    table = PinTable([(sid, A), ("session_1732900000", A)])
    table.set_raw(sid.upper().encode(), B)  # not canonical: another id, kept as text
    table.set_raw(b"session_1732900001", B)
    assert table._pins == {
        uuid.UUID(sid).int: A,
        -1732900000: A,
        sid.upper(): B,
        -1732900001: B,
    }
    assert sorted(table) == sorted([sid, sid.upper(), "session_1732900000", "session_1732900001"])
