"""What the backend learns of the instance behind a call the gateway passes on to it.

The backend sees the gateway's address on every call an instance makes through it (events,
restores, chat batches). A backend that limits calls per address (blazz: 100 an hour per IP
on its ``api`` group) would then count every instance as one. So each call names the
instance in ``X-Forwarded-For`` (after any chain it came with) and keeps its ``User-Agent``.
"""

from __future__ import annotations

from aiohttp import web

# With X-WhatsApp-Instance on a relayed event: the instance's 0-based place in the list.
INDEX_HEADER = "X-WhatsApp-Instance-Index"


def header_text(value: str) -> str:
    """A header value as text that Redis and a new request can carry: bytes that are not
    UTF-8 (kept by the parser as surrogates) become U+FFFD."""
    return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def forwarded_for(request: web.Request) -> str:
    """``X-Forwarded-For`` for the backend: the caller's chain, then the caller's address."""
    prior = header_text(request.headers.get("X-Forwarded-For", ""))
    peer = request.remote or ""
    return f"{prior}, {peer}" if prior else peer


def instance_headers(request: web.Request) -> list[tuple[str, str]]:
    """The headers that tell the backend which instance a relayed call is from."""
    headers = [("X-Forwarded-For", forwarded_for(request))]
    agent = request.headers.get("User-Agent")
    if agent:
        headers.append(("User-Agent", header_text(agent)))
    return headers
