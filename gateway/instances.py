"""The configured WhatsApp instances and what the gateway currently knows of each."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Instance:
    """One instance; ``up`` follows its health checks (see health.checks)."""

    url: str
    index: int
    up: bool = True
    fails: int = 0
    rises: int = 0
    last_check: float | None = None
    last_error: str | None = None
    sessions: dict[str, int] = field(default_factory=dict)  # its own /health report


@dataclass
class Fleet:
    """All instances, in configured order (the order breaks placement ties)."""

    instances: list[Instance]

    @classmethod
    def from_urls(cls, urls: tuple[str, ...]) -> Fleet:
        return cls([Instance(url, i) for i, url in enumerate(urls)])

    @property
    def urls(self) -> tuple[str, ...]:
        return tuple(i.url for i in self.instances)

    def get(self, url: str) -> Instance | None:
        return next((i for i in self.instances if i.url == url), None)

    def up(self) -> list[Instance]:
        return [i for i in self.instances if i.up]

    def first_up(self) -> Instance | None:
        return next((i for i in self.instances if i.up), None)
