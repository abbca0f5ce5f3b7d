"""The session pin table: session id -> instance URL, compact enough for a million pins.

The backend names sessions with UUIDs or ``session_<unix time>``; a million 36-character
UUID strings alone take 85 MB. A lowercase UUID in its canonical form is kept as its 128-bit
number (48 bytes), ``session_<digits>`` (no leading zero) as minus its number, any other id
as the string it is. The three kinds never meet in one slot (a string never equals a number;
UUID numbers are not negative), and each form maps back to exactly one id; readers see
string ids either way.
"""

from __future__ import annotations

import re
from collections.abc import ItemsView, Iterable, Iterator, MutableMapping, ValuesView
from typing import overload

CANONICAL_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CANONICAL_UUID_RAW = re.compile(CANONICAL_UUID.pattern.encode())
NUMBERED = re.compile(r"session_[1-9][0-9]{0,17}")
NUMBERED_RAW = re.compile(NUMBERED.pattern.encode())

Key = str | int


def pack(session_id: str) -> Key:
    if len(session_id) == 36 and CANONICAL_UUID.fullmatch(session_id):
        return int(session_id.replace("-", ""), 16)
    if session_id.startswith("session_") and NUMBERED.fullmatch(session_id):
        return -int(session_id[8:])
    return session_id


def pack_raw(session_id: bytes) -> Key:
    """``pack`` of an id as Redis gives it, with no string made on the way."""
    if len(session_id) == 36 and CANONICAL_UUID_RAW.fullmatch(session_id):
        return int(session_id.replace(b"-", b""), 16)
    if session_id.startswith(b"session_") and NUMBERED_RAW.fullmatch(session_id):
        return -int(session_id[8:])
    return session_id.decode()


def unpack(key: Key) -> str:
    if isinstance(key, str):
        return key
    if key < 0:
        return f"session_{-key}"
    h = f"{key:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


class PinTable(MutableMapping[str, str]):
    """A dict of session pins, with UUID ids stored packed."""

    __slots__ = ("_pins",)

    def __init__(self, pins: Iterable[tuple[str, str]] = ()) -> None:
        self._pins: dict[Key, str] = {pack(sid): url for sid, url in pins}

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

    def set_raw(self, session_id: bytes, url: str) -> None:
        """Pin an id as Redis gives it (the loading path)."""
        self._pins[pack_raw(session_id)] = url

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
