"""Which rows of the backend's accounts table are wrong: a pure decision, tested without I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gateway.decisions.view import BackendView

VERIFIED = "verified"  # the row names the instance that holds the session
WRONG = "wrong"  # the session is on another instance (or the index is off): to fix
NOT_FOUND = "not_found"  # no instance that answered lists the session: left alone
UNKNOWN_URL = "unknown_url"  # not found, and the row names no configured instance


@dataclass(frozen=True)
class Row:
    """A live webjs account as the table records it."""

    session_id: str
    url: str | None
    index: int | None


@dataclass(frozen=True)
class RowVerdict:
    kind: str
    row: Row
    url: str | None = None  # where the session is (verified, wrong)
    index: int | None = None


def judge(
    row: Row,
    holders: Mapping[str, Sequence[str]],
    view: BackendView,
    pins: Mapping[str, str],
) -> RowVerdict:
    """What to do about one row, given which instances list which sessions.

    A session listed on several instances is right where the row says, if that is one of
    them; else where its pin says, if one of them; else on the first in configured order
    (the rule reconciliation uses for pins). Sessions listed nowhere are never changed: on
    a partial listing they may well be on an instance that did not answer. What a right row
    says is ``view.shown``: the gateway's URL and the instance's index, or the instance's own
    URL; ``localhost`` and ``127.0.0.1`` are the same place.
    """
    listed = holders.get(row.session_id)
    if not listed:
        return RowVerdict(NOT_FOUND if view.known(row.url) else UNKNOWN_URL, row)
    pin = pins.get(row.session_id)
    recorded = view.instance_of(row.url, row.index)
    url = recorded if recorded in listed else pin if pin in listed else listed[0]
    shown, index = view.shown(url)
    right = view.same((row.url, row.index), (shown, index))
    return RowVerdict(VERIFIED if right else WRONG, row, row.url if right else shown, index)
