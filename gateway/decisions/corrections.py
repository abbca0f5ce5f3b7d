"""Which pins reconciliation changes: a pure decision, tested without I/O."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Correction:
    """One pin changed: ``moved`` (old → new), ``added`` (None → new), ``removed`` (old → None)."""

    kind: str
    session_id: str
    old: str | None
    new: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "session_id": self.session_id, "from": self.old, "to": self.new}


def holders_of(listings: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The instances listing each session, in the listings' (configured) order."""
    holders: dict[str, list[str]] = {}
    for url, session_ids in listings.items():
        for session_id in session_ids:
            holders.setdefault(session_id, []).append(url)
    return holders


def corrections(
    pins: Mapping[str, str], listings: Mapping[str, Sequence[str]], complete: bool
) -> list[Correction]:
    """The pin changes that make ``pins`` agree with what the instances say they hold.

    ``listings`` maps instance URLs, in configured order, to the session ids each holds.
    A session listed twice keeps its pin when that is one of its holders, else goes to
    the first holder. Pins of sessions nobody lists are removed only when ``complete``
    (every configured instance answered): on a partial view the session may well be on
    the instance that did not answer.
    """
    holders = holders_of(listings)
    changes = [
        Correction("added" if pins.get(sid) is None else "moved", sid, pins.get(sid), urls[0])
        for sid, urls in holders.items()
        if pins.get(sid) not in urls
    ]
    if complete:
        changes.extend(
            Correction("removed", sid, url, None) for sid, url in pins.items() if sid not in holders
        )
    return changes
