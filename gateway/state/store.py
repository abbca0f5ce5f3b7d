"""The pin store: one object for the callers of the pin map, the counts and their Redis.

``link`` keeps Redis's availability and the backlog, ``map`` the pins, ``counts`` the
sessions counted per instance and the placement reservations; this facade starts and stops
them together and offers what the router, the service and the admin API call.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager

from gateway.metrics import GatewayMetrics
from gateway.state.counts import Counts, Placement
from gateway.state.flights import Flights
from gateway.state.instances import Fleet
from gateway.state.keys import Keys
from gateway.state.link import RedisLink
from gateway.state.pin_table import PinTable
from gateway.state.pins import PinListener, PinMap


class PinStore:
    """Session and workspace pins, active counts and draining marks of all processes."""

    def __init__(
        self,
        redis_url: str,
        prefix: str,
        timeout: float,
        reservation_ttl: float,
        metrics: GatewayMetrics,
        fleet: Fleet,
    ) -> None:
        self.fleet = fleet
        self.keys = Keys(prefix)
        self.link = RedisLink(redis_url, self.keys, timeout, metrics)
        self.map = PinMap(self.link, fleet, metrics)
        self.counts = Counts(self.link, fleet, reservation_ttl)
        self.flights = Flights(self.link, reservation_ttl)

    async def start(self) -> None:
        """Load every pin into memory once and follow the other processes' changes."""
        subscribed = await self.map.subscribe()
        await self.link.start()
        await self.map.start(subscribed)

    async def close(self) -> None:
        await self.map.close()
        await self.link.close()

    @property
    def available(self) -> bool:
        """Whether Redis answers (else the store works from memory)."""
        return self.link.available

    @property
    def sessions(self) -> PinTable:
        return self.map.sessions

    @property
    def workspaces(self) -> dict[str, str]:
        return self.map.workspaces

    @property
    def active(self) -> dict[str, int]:
        """Sessions counted per instance URL."""
        return self.fleet.loads()

    @property
    def draining(self) -> set[str]:
        return {i.url for i in self.fleet.instances if i.draining}

    # --- the pin map --------------------------------------------------------------------

    async def session(self, session_id: str, fresh: bool = False) -> str | None:
        return await self.map.session(session_id, fresh)

    def remembered(self, session_id: str) -> str | None:
        return self.map.remembered(session_id)

    async def workspace(self, workspace_id: str) -> str | None:
        return await self.map.workspace(workspace_id)

    async def pin_session(
        self, session_id: str, url: str, workspace_id: str | None = None, *, source: str
    ) -> None:
        await self.map.pin_session(session_id, url, workspace_id, source=source)

    async def unpin_session(self, session_id: str, *, source: str) -> None:
        await self.map.unpin_session(session_id, source=source)

    def on_change(self, listener: PinListener) -> None:
        self.map.on_change(listener)

    async def set_draining(self, url: str, draining: bool) -> None:
        await self.map.set_draining(url, draining)

    # --- counts and placement -----------------------------------------------------------

    def creating(self, session_id: str) -> AbstractAsyncContextManager[None]:
        """While held, no other create of the session runs in any gateway process."""
        return self.flights.only_one(session_id)

    async def place(
        self, eligible: Sequence[str], limit: int, preferred: str | None
    ) -> Placement | None:
        return await self.counts.place(eligible, limit, preferred)

    async def confirm(self, placement: Placement) -> None:
        await self.counts.confirm(placement)

    async def abandon(self, placement: Placement) -> None:
        await self.counts.abandon(placement)

    async def session_ended(self, url: str) -> None:
        await self.counts.session_ended(url)

    async def set_active(self, url: str, count: int) -> None:
        await self.counts.set_active(url, count)
