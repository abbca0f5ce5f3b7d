"""Every Redis key the gateway owns, under ``<REDIS_PREFIX>wa-gateway:``."""

from __future__ import annotations


class Keys:
    def __init__(self, prefix: str) -> None:
        self.sessions = f"{prefix}sessions"
        self.workspaces = f"{prefix}workspaces"
        self.active = f"{prefix}active"
        self.draining = f"{prefix}draining"
        self.events = f"{prefix}events"
        self._placing = f"{prefix}placing:"

    def placing(self, url: str) -> str:
        return self._placing + url
