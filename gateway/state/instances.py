"""The configured WhatsApp instances and everything the gateway knows of each.

One ``Instance`` per configured URL holds it all: health (``up``, the last check and its
error), the admin's draining mark and the sessions counted on it. The health checker and
the pin store write it; ``/health``, the admin API and ``/metrics`` read it.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Instance:
    """One instance; ``up`` follows its health checks (see health.checks)."""

    url: str
    index: int
    up: bool = True
    draining: bool = False  # takes no new sessions (admin), shared by all processes
    sessions: int = 0  # sessions counted on it: what placement balances ("active")
    fails: int = 0
    rises: int = 0
    last_check: float | None = None
    last_error: str | None = None
    last_failure: str | None = None  # the latest failed check's error, kept once it passes again
    last_failure_at: float | None = None


@dataclass
class Fleet:
    """All instances, in configured order (the order breaks placement ties)."""

    instances: list[Instance]
    _by_url: dict[str, Instance] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_url = {i.url: i for i in self.instances}

    @classmethod
    def from_urls(cls, urls: tuple[str, ...]) -> Fleet:
        return cls([Instance(url, i) for i, url in enumerate(urls)])

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(i.url for i in self.instances)

    def get(self, url: str) -> Instance | None:
        return self._by_url.get(url)

    def up(self) -> list[Instance]:
        return [i for i in self.instances if i.up]

    def first_up(self) -> Instance | None:
        return next((i for i in self.instances if i.up), None)

    def loads(self) -> dict[str, int]:
        """Sessions counted per instance URL."""
        return {i.url: i.sessions for i in self.instances}
