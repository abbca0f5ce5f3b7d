"""The session pin table: session id -> instance URL, compact enough for a million pins.

The backend names sessions with UUIDs (or ``session_<unix time>``); a million 36-character
UUID strings alone take 85 MB. A session id that is a lowercase UUID in its canonical form
is kept as its 16 bytes, any other id as the string it is. A string key and a bytes key
never compare equal, so no two ids can meet in one slot; readers see string ids either way.
"""

from __future__ import annotations

import re
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping, ValuesView
from typing import overload

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def pack(session_id: str) -> str | bytes:
    if len(session_id) == 36 and CANONICAL_UUID.fullmatch(session_id):
        return bytes.fromhex(session_id.replace("-", ""))
    return session_id


def unpack(key: str | bytes) -> str:
    if isinstance(key, str):
        return key
    h = key.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class PinTable(MutableMapping[str, str]):
    """A dict of session pins, with UUID ids stored packed."""

    __slots__ = ("_pins",)

    def __init__(self, pins: Iterable[tuple[str, str]] = ()) -> None:
        self._pins: dict[str | bytes, str] = {pack(sid): url for sid, url in pins}

    def __getitem__(self, session_id: str) -> str:
        return self._pins[pack(session_id)]

    @overload
    def get(self, session_id: str, /) -> str | None: ...
    @overload
    def get(self, session_id: str, default: str, /) -> str: ...
    @overload
    def get(self, session_id: str, default: None, /) -> str | None: ...

    def get(self, session_id: str, default: str | None = None) -> str | None:
        return self._pins.get(pack(session_id), default)

    def __contains__(self, session_id: object) -> bool:
        return isinstance(session_id, str) and pack(session_id) in self._pins

    def __setitem__(self, session_id: str, url: str) -> None:
        self._pins[pack(session_id)] = url

    def __delitem__(self, session_id: str) -> None:
        del self._pins[pack(session_id)]

    def discard(self, session_id: str) -> None:
        self._pins.pop(pack(session_id), None)

    def copy(self) -> PinTable:
        """A snapshot sharing the packed keys: no id is unpacked, whatever the size."""
        snapshot = PinTable()
        snapshot._pins = self._pins.copy()
        return snapshot

    def __iter__(self) -> Iterator[str]:
        return map(unpack, self._pins)

    def __len__(self) -> int:
        return len(self._pins)

    def values(self) -> ValuesView[str]:
        return self._pins.values()

    def items(self) -> ItemsView[str, str]:
        return _Items(self)

    def __repr__(self) -> str:
        return f"PinTable({len(self)} pins)"


class _Items(ItemsView[str, str]):
    """Items without a second look-up per key."""

    _mapping: PinTable

    def __iter__(self) -> Iterator[tuple[str, str]]:
        for key, url in self._mapping._pins.items():
            yield unpack(key), url
