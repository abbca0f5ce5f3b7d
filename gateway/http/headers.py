"""HTTP headers the gateway strips or adds on the way through."""

from __future__ import annotations

from collections.abc import Sequence

from multidict import CIMultiDict

# Names the instance that answered, on every forwarded answer (metrics read it too).
INSTANCE_HEADER = "X-WhatsApp-Instance"
# A caller's key for a request that must be acted on at most once, and the mark on an answer
# given again from what was kept for that key (``gateway.handlers.idempotency``).
IDEMPOTENCY_HEADER = "Idempotency-Key"
REPLAYED_HEADER = "Idempotent-Replayed"

# RFC 9110 §7.6.1 connection-specific headers, plus those aiohttp recomputes.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
    }
)


HOP_BY_HOP_RAW = frozenset(name.encode() for name in HOP_BY_HOP)
# Connection options that name no end-to-end header ("keep-alive" names one dropped anyway).
_NAMES_NOTHING_KEPT = HOP_BY_HOP_RAW | {b"close"}

RawHeaders = Sequence[tuple[bytes, bytes]]


def end_to_end(raw: RawHeaders) -> list[tuple[bytes, bytes]]:
    """Headers as received, minus the hop-by-hop ones and those named by ``Connection``."""
    kept: list[tuple[bytes, bytes]] = []
    named: set[bytes] = set()
    for name, value in raw:
        lowered = name.lower()
        if lowered not in HOP_BY_HOP_RAW:
            kept.append((name, value))
        elif lowered == b"connection":
            named.update(_options(value))
    if named - _NAMES_NOTHING_KEPT:  # rare: a header made hop-by-hop by the sender
        kept = [(name, value) for name, value in kept if name.lower() not in named]
    return kept


def names_kept(connection: bytes) -> bool:
    """Whether a ``Connection`` value names a header ``end_to_end`` would otherwise keep."""
    if connection.strip(b", ").lower() in _NAMES_NOTHING_KEPT:
        return False  # the usual "keep-alive" or "close", alone
    return not _NAMES_NOTHING_KEPT.issuperset(_options(connection))


def _options(connection: bytes) -> list[bytes]:
    """The connection options a ``Connection`` value lists (empty list elements skipped)."""
    return [option for token in connection.split(b",") if (option := token.strip().lower())]


def decoded(raw: RawHeaders) -> CIMultiDict[str]:
    """Raw headers as aiohttp takes them (bytes that are not UTF-8 kept as escapes)."""
    return CIMultiDict(
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in raw
    )
