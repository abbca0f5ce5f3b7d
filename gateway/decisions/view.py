"""What the backend is told about where a session lives. Pure.

A backend such as blazz stores the instance a session is on (``assigned_instance_url``, from
each event's ``X-Instance-Url`` and from the gateway's write-back) and then calls that URL
directly for sends. Told the instance, it leaves the gateway after the first event, and a
session that moves fails there until its cache expires. So by default the backend is told the
gateway's own public URL, and the real instance only alongside (the index column, and
``X-WhatsApp-Instance`` on events), for its logs and screens. ``public_url`` empty keeps the
older behaviour: the backend sees, and calls, the instances themselves.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.decisions.events import match_instance, same_place


@dataclass(frozen=True, slots=True)
class BackendView:
    """``public_url`` is the gateway as the backend calls it; ``""``: the backend sees instances."""

    instances: tuple[str, ...]
    public_url: str = ""

    def index(self, instance: str | None) -> int | None:
        """The 0-based position of a configured instance, spelled any way ``same_place`` allows."""
        url = match_instance(instance, self.instances)
        return None if url is None else self.instances.index(url)

    def shown(self, instance: str) -> tuple[str, int | None]:
        """The URL and index the backend should record for a session on ``instance``."""
        return (self.public_url or instance, self.index(instance))

    def names_gateway(self, url: str | None) -> bool:
        return bool(self.public_url) and same_place(url, self.public_url)

    def instance_of(self, url: str | None, index: int | None) -> str | None:
        """The configured instance a recorded ``(url, index)`` means, ``None`` if none.

        A URL naming the gateway means the instance at ``index``; any other, the instance it
        names (``localhost`` and ``127.0.0.1`` alike).
        """
        if self.names_gateway(url):
            ok = index is not None and 0 <= index < len(self.instances)
            return self.instances[index] if ok else None
        return match_instance(url, self.instances)

    def known(self, url: str | None) -> bool:
        """Whether a recorded URL is nothing, the gateway, or a configured instance."""
        return url is None or self.names_gateway(url) or self.index(url) is not None

    def same(self, recorded: tuple[str | None, int | None], wanted: tuple[str, int | None]) -> bool:
        """Whether a row already says what ``shown`` wants (no write needed)."""
        return recorded[1] == wanted[1] and same_place(recorded[0], wanted[0])
