"""HTTP headers the gateway strips or adds on the way through."""

from __future__ import annotations

from multidict import CIMultiDict, CIMultiDictProxy

# Names the instance that answered, on every forwarded answer (metrics read it too).
INSTANCE_HEADER = "X-WhatsApp-Instance"

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


def end_to_end(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> CIMultiDict[str]:
    """Headers minus the hop-by-hop ones and those named by ``Connection``."""
    named = {h.strip().lower() for v in headers.getall("connection", []) for h in v.split(",")}
    return CIMultiDict(
        (k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP and k.lower() not in named
    )
