"""An instance's answer on its way back to the caller, kept as the bytes it came in.

Relaying is the gateway's hot path: turning every answer into an ``aiohttp`` response
(each header decoded into a multidict, then encoded again on the way out) cost more than
the answer's own parsing. A ``Relayed`` keeps the instance's end-to-end headers as the byte
pairs the parser gave; the entry point writes them as they are, and only a connection
aiohttp serves turns them into a ``web.Response``.
"""

from __future__ import annotations

from typing import TypeAlias

from aiohttp import web

from gateway.http.errors import OUTCOME_HEADER
from gateway.http.headers import (
    HOP_BY_HOP_RAW,
    INSTANCE_HEADER,
    REPLAYED_HEADER,
    RawHeaders,
    end_to_end,
    names_kept,
)

# The gateway's own headers: an instance's are not passed on, or a caller would take them for
# the gateway's word (which instance answered, the request id, whether a call may have been
# acted on, whether an answer is one kept for an idempotency key).
SET_HERE = frozenset(
    name.lower().encode()
    for name in (INSTANCE_HEADER, "X-Request-ID", OUTCOME_HEADER, REPLAYED_HEADER)
)


class Relayed:
    """Status, headers and body of an instance's answer, plus the gateway's own headers
    (``headers``: the instance's name, then the request id; a plain dict, so they are set
    and read under the exact names of ``gateway.http.headers`` and ``gateway.http.errors``)."""

    __slots__ = ("body", "dated", "headers", "kept", "sized", "status")

    def __init__(self, status: int, raw_headers: RawHeaders, body: bytes, url: str) -> None:
        self.status, self.body = status, body
        # The length a bodiless answer announces (a HEAD answer's: that of the body a GET
        # would have had), passed on as it is.
        self.sized = b""
        self.dated = False
        kept: list[tuple[bytes, bytes]] = []
        options = b""
        for name, value in raw_headers:  # end_to_end's work, in the one pass
            lowered = name.lower()
            if lowered in HOP_BY_HOP_RAW:
                if lowered == b"connection":
                    options += b"," + value
                elif lowered == b"content-length" and not (body or self.sized):
                    self.sized = value
            elif lowered not in SET_HERE:
                kept.append((name, value))
                if lowered == b"date":
                    self.dated = True
        if options and names_kept(options):  # rare: a header the instance made hop-by-hop
            kept = [pair for pair in end_to_end(raw_headers) if pair[0].lower() not in SET_HERE]
            self.dated = any(name.lower() == b"date" for name, _ in kept)
        self.kept = kept
        self.headers: dict[str, str] = {INSTANCE_HEADER: url}

    def response(self) -> web.Response:
        """The same answer as aiohttp's, for a connection aiohttp serves."""
        headers = [
            (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
            for name, value in self.kept
        ]
        headers.extend(self.headers.items())
        if self.sized:
            headers.append(("Content-Length", self.sized.decode("ascii", "replace")))
            return web.Response(status=self.status, headers=headers)
        return web.Response(status=self.status, headers=headers, body=self.body)


Answer: TypeAlias = web.StreamResponse | Relayed
