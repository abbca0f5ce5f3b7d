"""Which pins reconciliation changes: a pure decision, tested without I/O."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import TypeVar

T = TypeVar("T")
SLICE = 4_096  # items of long pure work between two yields of the event loop: a few ms


@dataclass(frozen=True)
class Correction:
    """One pin changed: ``moved`` (old → new), ``added`` (None → new), ``removed`` (old → None)."""

    kind: str
    session_id: str
    old: str | None
    new: str | None

    def as_json(self) -> dict[str, str | None]:
        return {"kind": self.kind, "session_id": self.session_id, "from": self.old, "to": self.new}


def holder_parts(
    listings: Mapping[str, Sequence[str]], holders: dict[str, list[str]]
) -> Iterator[None]:
    """Fill ``holders``: the instances listing each session, in the listings' (configured)
    order; one step per slice of at most ``SLICE`` sessions."""
    for url, session_ids in listings.items():
        for part in slices(session_ids):
            for session_id in part:
                holders.setdefault(session_id, []).append(url)
            yield None


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
    return [change for part in correction_parts(pins, listings, complete) for change in part]


def correction_parts(
    pins: Mapping[str, str], listings: Mapping[str, Sequence[str]], complete: bool
) -> Iterator[list[Correction]]:
    """``corrections`` in parts, each the work of at most ``SLICE`` sessions (some empty).

    A million pins take seconds to judge; a caller on an event loop yields it between
    parts. Neither ``pins`` nor ``listings`` may change until the last part.
    """
    holders: dict[str, list[str]] = {}
    for _ in holder_parts(listings, holders):
        yield []
    for part in slices(holders.items()):
        yield [
            Correction("added" if old is None else "moved", sid, old, urls[0])
            for sid, urls in part
            if (old := pins.get(sid)) not in urls
        ]
    if complete:
        for pinned in slices(pins.items()):
            yield [
                Correction("removed", sid, url, None) for sid, url in pinned if sid not in holders
            ]


def slices(items: Iterable[T], size: int = SLICE) -> Iterator[list[T]]:
    """``items`` in lists of ``size`` (the last shorter)."""
    it = iter(items)
    while part := list(islice(it, size)):
        yield part
