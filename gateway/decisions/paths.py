"""Request paths made canonical once, so the path routed is exactly the path forwarded.

A proxy that routes on one reading of a path and forwards another can be steered: routed
as session ``A``'s, ``/api/sessions/A/../B/status`` would reach session ``B``. Here the raw
path is read once, as RFC 3986 normalises it (duplicate slashes folded, ``.`` and ``..``
segments resolved, percent-encoded unreserved characters decoded, other escapes in upper
case), and that one string is both routed and forwarded.
"""

from __future__ import annotations

import re
import string

UNRESERVED = frozenset(string.ascii_letters + string.digits + "-._~")
# Printable ASCII but for space; anything else must come percent-encoded.
PATH_CHARS = re.compile(r"[!-~]*")
ESCAPE = re.compile(r"%(?P<hex>[0-9A-Fa-f]{2})|%")


class BadPath(ValueError):
    """A path that cannot be read one way only; its message says why."""


def origin_form(target: str) -> bool:
    """Whether a request target is a plain path (``/...``), not a URL or an authority.

    ``http://host/...``, ``//host/...`` and ``host:port`` would make the gateway reach a
    host of the caller's choosing.
    """
    return target.startswith("/") and not target.startswith("//")


def _decode_unreserved(segment: str) -> str:
    def one(match: re.Match[str]) -> str:
        if match.group("hex") is None:
            raise BadPath("The path has a '%' that is not a percent-encoding")
        char = chr(int(match.group("hex"), 16))
        return char if char in UNRESERVED else match.group(0).upper()

    return ESCAPE.sub(one, segment)


def normalize(path: str) -> str:
    """The canonical form of an origin-form path (no query string); raises ``BadPath``."""
    if not PATH_CHARS.fullmatch(path):
        raise BadPath("The path must be printable ASCII; percent-encode anything else")
    if "%" not in path and "//" not in path and "/." not in path:
        return path  # no escape, empty or dot segment: already canonical (the usual case)
    segments = path.split("/")[1:]
    out: list[str] = []
    for i, raw in enumerate(segments):
        last = i == len(segments) - 1
        if raw in ("", ".", ".."):
            if raw == ".." and out:
                out.pop()
            if last:
                out.append("")  # a trailing slash stays
            continue
        segment = _decode_unreserved(raw)
        if segment in (".", ".."):
            # Resolved by some servers, taken as a name by others (Express): ambiguous.
            raise BadPath("The path has a percent-encoded '.' or '..' segment")
        out.append(segment)
    return "/" + "/".join(out)
