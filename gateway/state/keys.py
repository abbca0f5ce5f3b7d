"""Every Redis key the gateway owns, under ``<REDIS_PREFIX>wa-gateway:``.

Keys one Lua script touches together share a hash tag (``{counts}``), so on Redis Cluster
they live in one slot; ``renamed`` maps the names an earlier version used to the new ones.
"""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.sessions = f"{prefix}sessions"
        self.workspaces = f"{prefix}workspaces"
        self.active = f"{prefix}{{counts}}:active"
        self.draining = f"{prefix}draining"
        self.events = f"{prefix}events"
        # Set once pins were loaded; missing after a reconnect: Redis lost its data.
        self.loaded = f"{prefix}loaded"
        self._placing = f"{prefix}{{counts}}:placing:"  # expire within seconds: not renamed
        self._creating = f"{prefix}creating:"
        self._idempotency = f"{prefix}idempotency:"
        self.renamed = {f"{prefix}active": self.active}

    def placing(self, url: str) -> str:
        return self._placing + url

    def creating(self, session_id: str) -> str:
        """The lock held while a create of the session is in flight."""
        return self._creating + session_id

    def idempotency(self, scope: str) -> str:
        """A caller's idempotency key (``decisions.idempotency.scope``) and what it got."""
        return self._idempotency + scope
