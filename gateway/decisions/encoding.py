"""Compressed request bodies: read a decoded copy, forward the bytes as they came.

An instance is sent a body exactly as the caller sent it, ``Content-Encoding`` and all;
the gateway decodes a copy only to read the JSON it routes by (the session id). A copy
is decoded up to the body limit and no further, so a small bomb costs no more memory
than a body at the limit.
"""

from __future__ import annotations

import zlib

# Content codings as aiohttp reads them (RFC 9110 §8.4.1); "x-gzip" is gzip's old name.
# "deflate" is meant to be zlib-wrapped, but is often sent raw; aiohttp reads both.
_GZIP = (16 + zlib.MAX_WBITS,)
_FORMATS = {"gzip": _GZIP, "x-gzip": _GZIP, "deflate": (zlib.MAX_WBITS, -zlib.MAX_WBITS)}


class Undecodable(ValueError):
    """A body whose coding cannot be read; ``status`` is the answer to give."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def codings(header: str) -> list[str]:
    """The codings a ``Content-Encoding`` value lists, in the order they were applied."""
    listed = [coding.strip().lower() for coding in header.split(",")]
    return [coding for coding in listed if coding and coding != "identity"]


def decoded(body: bytes, header: str, limit: int) -> bytes:
    """``body`` with the codings of ``header`` undone; at most ``limit`` bytes."""
    for coding in reversed(codings(header)):
        formats = _FORMATS.get(coding)
        if formats is None:
            raise Undecodable(415, f"Content-Encoding {coding!r} is not supported; use gzip")
        body = _inflate(body, formats, limit, coding)
    return body


def _inflate(body: bytes, formats: tuple[int, ...], limit: int, coding: str) -> bytes:
    for wbits in formats:
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(body, limit + 1)
        except zlib.error:
            continue
        if len(out) > limit:
            raise Undecodable(413, f"The decoded body is over {limit} bytes")
        if inflater.eof and not inflater.unused_data:
            return out
    raise Undecodable(400, f"The body is not valid {coding}")
