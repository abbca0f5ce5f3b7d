"""The router: which instance a request goes to, from pins, health and the placement policy."""

from __future__ import annotations

from gateway.decisions.placement import least_loaded, preferred_instance, shard
from gateway.state.counts import Placement
from gateway.state.instances import Fleet
from gateway.state.store import PinStore


class Router:
    def __init__(self, fleet: Fleet, pins: PinStore, policy: str, limit: int) -> None:
        self.fleet, self.pins, self.policy, self.limit = fleet, pins, policy, limit

    def eligible(self, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
        """Instances that may take a new session: up, not draining, in configured order."""
        return [
            i.url for i in self.fleet.instances if i.up and not i.draining and i.url not in exclude
        ]

    def live(self) -> list[str]:
        """Instances that may hold sessions right now (draining ones still do)."""
        return [i.url for i in self.fleet.up()]

    def down(self) -> list[str]:
        """Instances that failed their health checks (they may still hold sessions)."""
        return [i.url for i in self.fleet.instances if not i.up]

    def is_up(self, url: str) -> bool:
        instance = self.fleet.get(url)
        return instance is not None and instance.up

    async def place(self, workspace_id: str | None, exclude: set[str]) -> Placement | None:
        """Reserve room for a new session, following the placement policy."""
        ws = int(workspace_id) if workspace_id is not None else None
        pin = await self.pins.workspace(workspace_id) if workspace_id is not None else None
        preferred = preferred_instance(self.policy, self.fleet.urls, ws, pin)
        return await self.pins.place(self.eligible(exclude), self.limit, preferred)

    def next_placement(self) -> str | None:
        """Where a new session naming no workspace would go now, by this process's counts
        (a real placement also counts other processes' creates under way, in Redis)."""
        return least_loaded(self.eligible(), self.fleet.loads(), self.limit)

    async def for_workspace(self, workspace_id: str) -> str:
        """The workspace's instance; a workspace with no session placed yet is sharded.

        Nothing is written: a workspace is pinned only when one of its sessions is placed
        or found, so requests naming made-up workspaces cannot grow the pins.
        """
        url = await self.pins.workspace(workspace_id)
        return url if url is not None else shard(self.fleet.urls, int(workspace_id))

    def any_up(self) -> str | None:
        """Where a request naming no session or workspace goes."""
        instance = self.fleet.first_up()
        return instance.url if instance else None

    def fallbacks(self, first: str) -> list[str]:
        """``first``, then every other live instance: where a call goes while none is reached."""
        live = self.live()
        return [url for url in live if url == first] + [url for url in live if url != first]
